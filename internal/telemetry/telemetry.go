// Package telemetry is the one place where steadfast packages get their
// logger, tracer and meter, and the one implementation of trace-context
// propagation through message headers.
//
// The rule every package follows:
//   - Config.Logger nil means slog.Default(): what a service configured for
//     its own logs is where steadfast's warnings go.
//   - Config.TracerProvider and Config.MeterProvider nil mean the
//     OpenTelemetry API's global providers (otel.GetTracerProvider,
//     otel.GetMeterProvider), which are no-ops until the application installs
//     an SDK. The library never depends on the SDK.
//   - Instrumentation scopes are the package's import path.
//   - Spans follow the OpenTelemetry messaging conventions: "publish
//     <destination>" (kind producer) around a publish, "process
//     <destination>" (kind consumer) around a handler call, parented by the
//     W3C traceparent carried in the message's headers; other spans are
//     named "<operation> <target>" (e.g. "append orders-7").
package telemetry

import (
	"context"
	"log/slog"
	"maps"
	"reflect"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
)

// Module is the prefix of every instrumentation scope.
const Module = "github.com/steadfast-go/steadfast"

// Logger returns l, or slog.Default() when l is nil.
func Logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// Tracer returns the tracer of scope (a package path below Module, e.g.
// "outbox") from tp, or from the global provider when tp is nil.
func Tracer(tp trace.TracerProvider, scope string) trace.Tracer {
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return tp.Tracer(Module + "/" + scope)
}

// Meter returns the meter of scope from mp, or from the global provider
// when mp is nil.
func Meter(mp metric.MeterProvider, scope string) metric.Meter {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(Module + "/" + scope)
}

var prop propagation.TraceContext

// The span start options of publish and process spans, built once: a
// variadic argument passed on to an interface method is allocated at every
// call otherwise, and process spans start once per message.
var (
	producerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	consumerSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
)

// Inject returns headers with the W3C trace context of ctx added, unless
// ctx has no valid span context or headers already carry a traceparent. It
// never modifies headers: when something is added, the result is a copy.
func Inject(ctx context.Context, headers map[string]string) map[string]string {
	if headers[broker.HeaderTraceparent] != "" || !trace.SpanContextFromContext(ctx).IsValid() {
		return headers
	}
	h := make(map[string]string, len(headers)+2)
	maps.Copy(h, headers)
	prop.Inject(ctx, propagation.MapCarrier(h))
	return h
}

// TraceHeaders returns the headers propagator p (nil: W3C trace context,
// as Inject writes) gives for ctx, or nil when it gives none. Code that
// writes many messages for one ctx computes them once and adds them to
// each message with WithTraceHeaders, or maps them to its wire format
// directly.
func TraceHeaders(ctx context.Context, p propagation.TextMapPropagator) map[string]string {
	if p == nil {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return nil
		}
		p = prop
	}
	c := propagation.MapCarrier{}
	p.Inject(ctx, c)
	if len(c) == 0 {
		return nil
	}
	return c
}

// WithTraceHeaders returns h with the headers of th (TraceHeaders' result)
// added, unless th is empty or h already carries a traceparent; a header h
// has keeps its value. It never modifies h: when something is added, the
// result is a copy.
func WithTraceHeaders(h, th map[string]string) map[string]string {
	if len(th) == 0 || h[broker.HeaderTraceparent] != "" {
		return h
	}
	out := make(map[string]string, len(h)+len(th))
	maps.Copy(out, th)
	maps.Copy(out, h)
	return out
}

// Extract returns ctx with the remote span context of headers' traceparent
// (and tracestate), or ctx unchanged when there is none or it is malformed.
func Extract(ctx context.Context, headers map[string]string) context.Context {
	if headers[broker.HeaderTraceparent] == "" {
		return ctx
	}
	return prop.Extract(ctx, propagation.MapCarrier(headers))
}

// Continue returns the context a handler's own spans start from: ctx
// itself when its span is already in the trace of the delivery's
// traceparent (the adapter's "process <topic>" span of this delivery, which
// is the child of that context), so the handler's spans are children of the
// process span; otherwise ctx with the headers' remote span context, as
// Extract.
func Continue(ctx context.Context, headers map[string]string) context.Context {
	cur := trace.SpanContextFromContext(ctx)
	if !cur.IsValid() || headers[broker.HeaderTraceparent] == "" {
		return Extract(ctx, headers)
	}
	remote := trace.SpanContextFromContext(Extract(context.Background(), headers))
	if remote.IsValid() && remote.TraceID() == cur.TraceID() {
		return ctx
	}
	return Extract(ctx, headers)
}

// System is the messaging.system attribute value of an adapter.
func System(name string) attribute.KeyValue { return attribute.String("messaging.system", name) }

// StartPublish starts the producer span of a publish of msgs and gives
// every message without a traceparent the span's trace context. msgs must
// be the caller's own copy of the messages (each Headers map that changes is
// replaced, never written). system is the messaging.system value.
func StartPublish(ctx context.Context, tr trace.Tracer, system string, msgs []broker.Message) (context.Context, trace.Span) {
	ctx, span := StartPublishSpan(ctx, tr, system, msgs)
	if th := TraceHeaders(ctx, nil); th != nil {
		for i := range msgs {
			msgs[i].Headers = WithTraceHeaders(msgs[i].Headers, th)
		}
	}
	return ctx, span
}

// StartPublishSpan starts the producer span of a publish of msgs, like
// StartPublish, without touching the messages: for adapters that add the
// trace context (TraceHeaders of the returned ctx) while they map messages
// to their wire format. Attributes are computed only when the span records.
func StartPublishSpan(ctx context.Context, tr trace.Tracer, system string, msgs []broker.Message) (context.Context, trace.Span) {
	name := "publish"
	if len(msgs) > 0 {
		name = "publish " + msgs[0].Topic
	}
	ctx, span := tr.Start(ctx, name, producerSpan...)
	if span.IsRecording() {
		attrs := []attribute.KeyValue{System(system), attribute.String("messaging.operation.type", "send")}
		if len(msgs) == 1 {
			attrs = append(attrs, attribute.String("messaging.destination.name", msgs[0].Topic),
				attribute.String("messaging.message.id", msgs[0].ID))
		} else {
			attrs = append(attrs, attribute.Int("messaging.batch.message_count", len(msgs)))
		}
		span.SetAttributes(attrs...)
	}
	return ctx, span
}

// StartProcess starts the consumer span of one handler call, parented by the
// delivery's traceparent when it has one. Attributes are computed only when
// the span records.
func StartProcess(ctx context.Context, tr trace.Tracer, system string, d broker.Delivery) (context.Context, trace.Span) {
	ctx = Extract(ctx, d.Headers)
	ctx, span := tr.Start(ctx, "process "+d.Topic, consumerSpan...)
	if span.IsRecording() {
		span.SetAttributes(System(system),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", d.Topic),
			attribute.String("messaging.consumer.group.name", d.Group),
			attribute.String("messaging.message.id", d.ID),
			attribute.Int("steadfast.attempt", d.Attempt))
	}
	return ctx, span
}

// Recording reports whether spans from tp may be recorded, tp being a
// configured TracerProvider (nil: the OpenTelemetry global provider). It is
// false only for the global provider while no SDK is installed
// (otel.SetTracerProvider not called yet), when every span is a no-op.
// Should a future API version rename its default provider, Recording
// reports true and spans are started as before: it can cost time, never a
// span.
func Recording(tp trace.TracerProvider) bool {
	if tp != nil {
		return true
	}
	return reflect.TypeOf(otel.GetTracerProvider()).String() != "*global.tracerProvider"
}

// Spans starts the publish and process spans of one component (an
// adapter's publisher or subscriber) by the telemetry rule.
type Spans struct {
	tp     trace.TracerProvider // as configured: nil means the global one
	tracer trace.Tracer
	system string
}

// NewSpans returns the spans of a component whose Config.TracerProvider is
// tp, with instrumentation scope scope and messaging.system system.
func NewSpans(tp trace.TracerProvider, scope, system string) Spans {
	return Spans{tp: tp, tracer: Tracer(tp, scope), system: system}
}

// Publish is StartPublish with the component's tracer and system.
func (s Spans) Publish(ctx context.Context, msgs []broker.Message) (context.Context, trace.Span) {
	return StartPublish(ctx, s.tracer, s.system, msgs)
}

// PublishSpan is StartPublishSpan with the component's tracer and system.
func (s Spans) PublishSpan(ctx context.Context, msgs []broker.Message) (context.Context, trace.Span) {
	return StartPublishSpan(ctx, s.tracer, s.system, msgs)
}

// Process is StartProcess with the component's tracer and system, except
// while no span can be recorded (see Recording): then no span is started,
// ctx only gains the delivery's remote span context (so the handler's own
// publishes continue the trace), and the span returned is a no-op. That
// spares the per-message allocations of a span nobody records.
func (s Spans) Process(ctx context.Context, d broker.Delivery) (context.Context, trace.Span) {
	if !Recording(s.tp) {
		return Extract(ctx, d.Headers), noSpan
	}
	return StartProcess(ctx, s.tracer, s.system, d)
}

// noSpan is the no-op span of a context without one.
var noSpan = trace.SpanFromContext(context.Background())

// End ends span, first recording err on it (as an event and the span's
// error status) when err is not nil.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
