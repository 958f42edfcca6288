package rabbitmq

import (
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// The adapter's instrumentation scope (below telemetry.Module) and its
// messaging.system attribute.
const (
	scope  = "broker/rabbitmq"
	system = "rabbitmq"
)

var systemAttr = telemetry.System(system)

// instruments holds the spans and the metric instruments of one
// connection. Spans come from internal/telemetry (StartPublish,
// StartProcess); the metrics are the adapter's own.
type instruments struct {
	spans      telemetry.Spans
	sent       metric.Int64Counter
	sendDur    metric.Float64Histogram
	consumed   metric.Int64Counter
	processDur metric.Float64Histogram
	reconnects metric.Int64Counter

	// Precomputed attribute options, so that recording allocates nothing.
	sys, sysFailed, ack, retry, reject metric.MeasurementOption
}

// newInstruments builds the instruments on mp and tp (nil: the
// OpenTelemetry global providers).
func newInstruments(mp metric.MeterProvider, tp trace.TracerProvider) *instruments {
	m := telemetry.Meter(mp, scope)
	set := func(kv ...attribute.KeyValue) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(append([]attribute.KeyValue{systemAttr}, kv...)...))
	}
	t := &instruments{
		spans:     telemetry.NewSpans(tp, scope, system),
		sys:       set(),
		sysFailed: set(attribute.String("error.type", "publish_failed")),
		ack:       set(attribute.String("outcome", "ack")),
		retry:     set(attribute.String("outcome", "retry")),
		reject:    set(attribute.String("outcome", "reject")),
	}
	// Instrument creation only fails on invalid names, which these are not;
	// a nil instrument from a broken provider is replaced by a no-op one.
	noop := metricnoop.Meter{}
	var err error
	if t.sent, err = m.Int64Counter("messaging.client.sent.messages",
		metric.WithDescription("Messages published, by outcome (error.type absent on success).")); err != nil {
		t.sent, _ = noop.Int64Counter("")
	}
	if t.sendDur, err = m.Float64Histogram("messaging.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of Publish calls, confirms included.")); err != nil {
		t.sendDur, _ = noop.Float64Histogram("")
	}
	if t.consumed, err = m.Int64Counter("messaging.client.consumed.messages",
		metric.WithDescription("Deliveries handled, by outcome: ack, retry, reject.")); err != nil {
		t.consumed, _ = noop.Int64Counter("")
	}
	if t.processDur, err = m.Float64Histogram("messaging.process.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of handler calls.")); err != nil {
		t.processDur, _ = noop.Float64Histogram("")
	}
	if t.reconnects, err = m.Int64Counter("steadfast.rabbitmq.reconnects",
		metric.WithDescription("Connections lost and re-established.")); err != nil {
		t.reconnects, _ = noop.Int64Counter("")
	}
	return t
}
