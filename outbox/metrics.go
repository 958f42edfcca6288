package outbox

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// scope is the package's instrumentation scope, below telemetry.Module.
const scope = "outbox"

// Metric names. Every instrument carries the attribute outbox.name
// (Config.Name).
const (
	// MetricPublished counts rows the broker accepted and the store
	// recorded.
	MetricPublished = "steadfast.outbox.published"
	// MetricFailed counts failed publish attempts charged to rows, parked
	// ones included.
	MetricFailed = "steadfast.outbox.failed"
	// MetricParked counts rows parked (status dead).
	MetricParked = "steadfast.outbox.parked"
	// MetricRepublished counts rows the broker accepted whose store update
	// then failed: they will be published again (duplicates).
	MetricRepublished = "steadfast.outbox.republished"
	// MetricBatchDuration is the latency of one Publish call carrying a
	// batch, in seconds, with attributes outcome=ok|error.
	MetricBatchDuration = "steadfast.outbox.batch.duration"
	// MetricBatchSize is the number of messages per Publish call.
	MetricBatchSize = "steadfast.outbox.batch.size"
	// MetricPending is the number of rows waiting to be published
	// (refreshed every Config.StatsInterval).
	MetricPending = "steadfast.outbox.pending"
	// MetricOldestPendingAge is the age of the oldest pending row in
	// seconds, 0 when none.
	MetricOldestPendingAge = "steadfast.outbox.oldest_pending_age"
	// MetricDead is the number of parked rows.
	MetricDead = "steadfast.outbox.dead"
)

type metrics struct {
	meter       metric.Meter
	attrs       metric.MeasurementOption
	published   metric.Int64Counter
	failed      metric.Int64Counter
	parked      metric.Int64Counter
	republished metric.Int64Counter
	duration    metric.Float64Histogram
	size        metric.Int64Histogram
	pending     metric.Int64ObservableGauge
	oldest      metric.Float64ObservableGauge
	dead        metric.Int64ObservableGauge
	stats       atomic.Pointer[Stats]
	okAttrs     metric.MeasurementOption
	errAttrs    metric.MeasurementOption
}

func newMetrics(mp metric.MeterProvider, name string) (*metrics, error) {
	m := &metrics{meter: telemetry.Meter(mp, scope)}
	nameAttr := attribute.String("outbox.name", name)
	m.attrs = metric.WithAttributeSet(attribute.NewSet(nameAttr))
	m.okAttrs = metric.WithAttributeSet(attribute.NewSet(nameAttr, attribute.String("outcome", "ok")))
	m.errAttrs = metric.WithAttributeSet(attribute.NewSet(nameAttr, attribute.String("outcome", "error")))
	var err error
	if m.published, err = m.meter.Int64Counter(MetricPublished, metric.WithUnit("{message}"),
		metric.WithDescription("Outbox rows published to the broker.")); err != nil {
		return nil, err
	}
	if m.failed, err = m.meter.Int64Counter(MetricFailed, metric.WithUnit("{message}"),
		metric.WithDescription("Failed publish attempts charged to outbox rows.")); err != nil {
		return nil, err
	}
	if m.parked, err = m.meter.Int64Counter(MetricParked, metric.WithUnit("{message}"),
		metric.WithDescription("Outbox rows parked as dead.")); err != nil {
		return nil, err
	}
	if m.republished, err = m.meter.Int64Counter(MetricRepublished, metric.WithUnit("{message}"),
		metric.WithDescription("Rows accepted by the broker whose store update failed; they are published again.")); err != nil {
		return nil, err
	}
	if m.duration, err = m.meter.Float64Histogram(MetricBatchDuration, metric.WithUnit("s"),
		metric.WithDescription("Latency of one batch Publish call."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)); err != nil {
		return nil, err
	}
	if m.size, err = m.meter.Int64Histogram(MetricBatchSize, metric.WithUnit("{message}"),
		metric.WithDescription("Messages per batch Publish call."),
		metric.WithExplicitBucketBoundaries(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)); err != nil {
		return nil, err
	}
	if m.pending, err = m.meter.Int64ObservableGauge(MetricPending, metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows waiting to be published.")); err != nil {
		return nil, err
	}
	if m.oldest, err = m.meter.Float64ObservableGauge(MetricOldestPendingAge, metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest pending outbox row.")); err != nil {
		return nil, err
	}
	if m.dead, err = m.meter.Int64ObservableGauge(MetricDead, metric.WithUnit("{row}"),
		metric.WithDescription("Parked outbox rows.")); err != nil {
		return nil, err
	}
	return m, nil
}

// observe registers the gauge callback for the life of one Run.
func (m *metrics) observe() (metric.Registration, error) {
	return m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := m.stats.Load()
		if s == nil {
			return nil
		}
		o.ObserveInt64(m.pending, s.Pending, m.attrs)
		o.ObserveInt64(m.dead, s.Dead, m.attrs)
		age := 0.0
		if !s.OldestPending.IsZero() && s.Pending > 0 {
			// The sample is up to StatsInterval old; the oldest row has aged
			// since, unless it was published meanwhile.
			age = time.Since(s.OldestPending).Seconds()
		}
		o.ObserveFloat64(m.oldest, max(age, 0), m.attrs)
		return nil
	}, m.pending, m.oldest, m.dead)
}

func (m *metrics) batchDuration(ctx context.Context, d time.Duration, n int, ok bool) {
	attrs := m.okAttrs
	if !ok {
		attrs = m.errAttrs
	}
	m.duration.Record(ctx, d.Seconds(), attrs)
	m.size.Record(ctx, int64(n), m.attrs)
}

func (m *metrics) record(ctx context.Context, o Outcome) {
	if n := len(o.Published); n > 0 {
		m.published.Add(ctx, int64(n), m.attrs)
	}
	if n := len(o.Failed); n > 0 {
		m.failed.Add(ctx, int64(n), m.attrs)
		parked := 0
		for _, f := range o.Failed {
			if f.Park {
				parked++
			}
		}
		if parked > 0 {
			m.parked.Add(ctx, int64(parked), m.attrs)
		}
	}
}

func (m *metrics) completeFailed(ctx context.Context, published int) {
	if published > 0 {
		m.republished.Add(ctx, int64(published), m.attrs)
	}
}
