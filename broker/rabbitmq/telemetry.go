package rabbitmq

import (
	"context"
	"maps"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/steadfast-go/steadfast/broker"
)

const scope = "github.com/steadfast-go/steadfast/broker/rabbitmq"

var systemAttr = attribute.String("messaging.system", "rabbitmq")

// noopSpan is returned where no span is started, so that ending it never
// ends a span of the caller's.
var noopSpan trace.Span = tracenoop.Span{}

// telemetry holds the OpenTelemetry instruments of one connection.
type telemetry struct {
	tracing    bool // a TracerProvider was configured
	tracer     trace.Tracer
	prop       propagation.TraceContext
	sent       metric.Int64Counter
	sendDur    metric.Float64Histogram
	consumed   metric.Int64Counter
	processDur metric.Float64Histogram
	reconnects metric.Int64Counter

	// Precomputed attribute options, so that recording allocates nothing.
	sys, sysFailed, ack, retry, reject metric.MeasurementOption
}

func newTelemetry(mp metric.MeterProvider, tp trace.TracerProvider) *telemetry {
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	tracing := tp != nil
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	m := mp.Meter(scope)
	set := func(kv ...attribute.KeyValue) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(append([]attribute.KeyValue{systemAttr}, kv...)...))
	}
	t := &telemetry{
		tracing:   tracing,
		tracer:    tp.Tracer(scope),
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

// startPublish starts the span of a Publish call and, when the span
// context is valid, gives the messages that have no traceparent header W3C
// traceparent (and tracestate) headers. msgs must be the Publisher's own
// copy (brokerimpl.Normalize's result); each Headers map it changes is replaced
// by a new one, so the caller's maps are not modified. Without a
// TracerProvider no span is started, and the caller's span context, if
// any, is propagated.
func (t *telemetry) startPublish(ctx context.Context, msgs []broker.Message) (context.Context, trace.Span) {
	if !t.tracing && !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, noopSpan
	}
	name := "publish"
	if len(msgs) > 0 {
		name = "publish " + msgs[0].Topic
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(systemAttr, attribute.Int("messaging.batch.message_count", len(msgs))))
	if !span.SpanContext().IsValid() {
		return ctx, span
	}
	for i := range msgs {
		if msgs[i].Headers[broker.HeaderTraceparent] != "" {
			continue
		}
		h := make(map[string]string, len(msgs[i].Headers)+2)
		maps.Copy(h, msgs[i].Headers)
		t.prop.Inject(ctx, propagation.MapCarrier(h))
		msgs[i].Headers = h
	}
	return ctx, span
}

// startProcess starts the span of one handler call, parented by the
// traceparent header of the message when it has one. Without a
// TracerProvider it only puts the remote span context in ctx.
func (t *telemetry) startProcess(ctx context.Context, d broker.Delivery) (context.Context, trace.Span) {
	if d.Headers[broker.HeaderTraceparent] != "" {
		ctx = t.prop.Extract(ctx, propagation.MapCarrier(d.Headers))
	}
	if !t.tracing {
		return ctx, noopSpan
	}
	return t.tracer.Start(ctx, "process "+d.Topic, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(systemAttr,
			attribute.String("messaging.destination.name", d.Topic),
			attribute.String("messaging.consumer.group.name", d.Group),
			attribute.String("messaging.message.id", d.ID),
			attribute.Int("messaging.rabbitmq.attempt", d.Attempt)))
}
