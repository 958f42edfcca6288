package saga

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Metric names of the engine. Counters and the histogram carry the
// attribute saga.type; the gauge carries saga.type and saga.status.
const (
	// MetricStarted counts instances started.
	MetricStarted = "steadfast.saga.started"
	// MetricCompleted counts instances that completed.
	MetricCompleted = "steadfast.saga.completed"
	// MetricCompensated counts instances that finished compensated.
	MetricCompensated = "steadfast.saga.compensated"
	// MetricParked counts instances that parked.
	MetricParked = "steadfast.saga.parked"
	// MetricAborted counts parked instances an operator cancelled.
	MetricAborted = "steadfast.saga.aborted"
	// MetricInstances is the number of unfinished instances by status
	// (running, compensating, parked), refreshed every
	// Config.StatsInterval.
	MetricInstances = "steadfast.saga.instances"
	// MetricStepDuration is the latency of a step or compensation attempt
	// in seconds: command to reply (or timeout), or a local function's
	// run; attributes saga.step, saga.action (do, compensate) and
	// saga.outcome (success, failure, timeout).
	MetricStepDuration = "steadfast.saga.step.duration"
	// MetricConflicts counts transitions decided again after losing a race
	// with another engine.
	MetricConflicts = "steadfast.saga.conflicts"
	// MetricDuplicates counts redelivered replies recognised as applied.
	MetricDuplicates = "steadfast.saga.duplicate_replies"
	// MetricRejected counts malformed replies and replies for unknown
	// instances.
	MetricRejected = "steadfast.saga.rejected_replies"
)

type metrics struct {
	started, completed, compensated, parked, aborted metric.Int64Counter
	conflicts, duplicates, rejected                  metric.Int64Counter
	step                                             metric.Float64Histogram

	mu     sync.Mutex
	counts []StatusCount
}

func newMetrics(mp metric.MeterProvider) (*metrics, error) {
	meter := telemetry.Meter(mp, "saga")
	m := &metrics{}
	counter := func(dst *metric.Int64Counter, name, unit, desc string) error {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		*dst = c
		return err
	}
	for _, c := range []struct {
		dst              *metric.Int64Counter
		name, unit, desc string
	}{
		{&m.started, MetricStarted, "{instance}", "Saga instances started."},
		{&m.completed, MetricCompleted, "{instance}", "Saga instances completed."},
		{&m.compensated, MetricCompensated, "{instance}", "Saga instances compensated."},
		{&m.parked, MetricParked, "{instance}", "Saga instances parked for an operator."},
		{&m.aborted, MetricAborted, "{instance}", "Parked saga instances cancelled by an operator."},
		{&m.conflicts, MetricConflicts, "{transition}", "Saga transitions decided again after a concurrent change."},
		{&m.duplicates, MetricDuplicates, "{reply}", "Redelivered saga replies recognised as already applied."},
		{&m.rejected, MetricRejected, "{reply}", "Malformed saga replies and replies for unknown instances."},
	} {
		if err := counter(c.dst, c.name, c.unit, c.desc); err != nil {
			return nil, err
		}
	}
	var err error
	if m.step, err = meter.Float64Histogram(MetricStepDuration, metric.WithUnit("s"),
		metric.WithDescription("Latency of saga step and compensation attempts.")); err != nil {
		return nil, err
	}
	_, err = meter.Int64ObservableGauge(MetricInstances, metric.WithUnit("{instance}"),
		metric.WithDescription("Unfinished saga instances by status."),
		metric.WithInt64Callback(func(_ context.Context, o metric.Int64Observer) error {
			m.mu.Lock()
			defer m.mu.Unlock()
			for _, c := range m.counts {
				o.Observe(c.Count, metric.WithAttributes(attribute.String("saga.type", c.Type),
					attribute.String("saga.status", string(c.Status))))
			}
			return nil
		}))
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) setCounts(c []StatusCount) {
	m.mu.Lock()
	m.counts = c
	m.mu.Unlock()
}

// record adds a committed transition's outcome and step latencies.
func (m *metrics) record(ctx context.Context, t *transition) {
	typ := attribute.String("saga.type", t.inst.Type)
	attrs := metric.WithAttributes(typ)
	switch t.outcome {
	case StatusCompleted:
		m.completed.Add(ctx, 1, attrs)
	case StatusCompensated:
		m.compensated.Add(ctx, 1, attrs)
	case StatusParked:
		m.parked.Add(ctx, 1, attrs)
	case StatusAborted:
		m.aborted.Add(ctx, 1, attrs)
	}
	for _, l := range t.latencies {
		m.step.Record(ctx, l.d.Seconds(), metric.WithAttributes(typ, attribute.String("saga.step", l.step),
			attribute.String("saga.action", l.action), attribute.String("saga.outcome", l.outcome)))
	}
}
