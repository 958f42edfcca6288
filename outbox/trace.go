package outbox

import (
	"context"
	"maps"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// messageSpans continues each message's own trace through the relay. A row
// carries the trace context of the request that enqueued it (its
// traceparent header), not the relay's. While spans can be recorded
// (telemetry.Recording), each message that carries a trace context gets a
// "publish <topic>" producer span, the child of that context and linked to
// the batch span, and goes out with the span's context in place of its
// own: a consumer's "process <topic>" span is then the child of the
// relay's publish, in the trace of the enqueuing request. msgs must be the
// caller's copies (a changed Headers map is replaced, never written). The
// returned function ends the spans, recording err on them, or, when failed
// is not nil, the error of each failed index.
func (r *Relay) messageSpans(ctx context.Context, msgs []broker.Message) func(err error, failed map[int]error) {
	if !telemetry.Recording(r.cfg.TracerProvider) {
		return func(error, map[int]error) {}
	}
	batch := trace.SpanContextFromContext(ctx)
	spans := make([]trace.Span, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if m.Headers[broker.HeaderTraceparent] == "" {
			continue
		}
		parent := telemetry.Extract(ctx, m.Headers)
		if !trace.SpanContextFromContext(parent).IsValid() {
			continue // a malformed traceparent: leave the message as it is
		}
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
		if batch.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: batch}))
		}
		sctx, span := r.trace.Start(parent, "publish "+m.Topic, opts...)
		if span.IsRecording() {
			span.SetAttributes(attribute.String("messaging.operation.type", "send"),
				attribute.String("messaging.destination.name", m.Topic),
				attribute.String("messaging.message.id", m.ID),
				attribute.String("outbox.name", r.cfg.Name))
		}
		h := maps.Clone(m.Headers)
		delete(h, broker.HeaderTraceparent)
		delete(h, broker.HeaderTracestate)
		m.Headers = telemetry.Inject(sctx, h)
		spans[i] = span
	}
	return func(err error, failed map[int]error) {
		for i, s := range spans {
			if s == nil {
				continue
			}
			e := err
			if failed != nil {
				e = failed[i]
			}
			telemetry.End(s, e)
		}
	}
}
