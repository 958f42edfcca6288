// Package telemetrytest records the spans steadfast components emit, on the
// OpenTelemetry SDK, and checks them against the telemetry rule: a
// "publish <topic>" producer span parented by the caller's span, and a
// "process <topic>" consumer span parented by the publish span through the
// message's traceparent, whose context is the one the handler runs in.
//
// It is for tests only: the library depends on the OpenTelemetry API, never
// on the SDK, and no package outside _test.go files imports this one.
package telemetrytest

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Recorder is a TracerProvider that keeps every span that ended.
type Recorder struct {
	// Provider is what the component under test is configured with.
	Provider *sdktrace.TracerProvider
	rec      *tracetest.SpanRecorder
}

// New returns a Recorder, shut down when the test ends.
func New(t testing.TB) *Recorder {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return &Recorder{Provider: tp, rec: rec}
}

// Caller starts a span standing for the application code that publishes;
// the caller ends it.
func (r *Recorder) Caller(ctx context.Context) (context.Context, trace.Span) {
	return r.Provider.Tracer("telemetrytest").Start(ctx, "caller")
}

// Ended returns the spans that ended so far, in the order they ended.
func (r *Recorder) Ended() []sdktrace.ReadOnlySpan { return r.rec.Ended() }

// Span waits up to timeout for an ended span with the given name and
// kind, and returns the first one.
func (r *Recorder) Span(t testing.TB, name string, kind trace.SpanKind, timeout time.Duration) sdktrace.ReadOnlySpan {
	t.Helper()
	return r.find(t, name, kind, trace.SpanID{}, timeout)
}

// find waits up to timeout for an ended span with the given name, kind
// and, unless id is zero, span ID.
func (r *Recorder) find(t testing.TB, name string, kind trace.SpanKind, id trace.SpanID, timeout time.Duration) sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ended := r.rec.Ended()
		if i := slices.IndexFunc(ended, func(s sdktrace.ReadOnlySpan) bool {
			return s.Name() == name && s.SpanKind() == kind && (!id.IsValid() || s.SpanContext().SpanID() == id)
		}); i >= 0 {
			return ended[i]
		}
		if time.Now().After(deadline) {
			names := make([]string, len(ended))
			for i, s := range ended {
				names[i] = s.Name() + "/" + s.SpanKind().String()
			}
			t.Fatalf("no ended %s span %q (span ID %v) within %v; ended: %v", kind, name, id, timeout, names)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// CheckPublishProcess checks the spans of one message published to topic
// inside caller's span and handled by a handler whose ctx carried handler's
// span context: the publish span is a producer span named "publish
// <topic>", a child of caller, with messaging.system = system; the process
// span, the one the handler ran in, is a consumer span named "process
// <topic>" in the same trace, a child of the publish span.
func (r *Recorder) CheckPublishProcess(t testing.TB, system, topic string, caller, handler trace.SpanContext) {
	t.Helper()
	const timeout = 30 * time.Second
	pub := r.Span(t, "publish "+topic, trace.SpanKindProducer, timeout)
	if got := pub.Parent().SpanID(); got != caller.SpanID() || pub.SpanContext().TraceID() != caller.TraceID() {
		t.Errorf("publish span: parent %v in trace %v, want the caller's span %v in trace %v",
			got, pub.SpanContext().TraceID(), caller.SpanID(), caller.TraceID())
	}
	if v := attr(pub.Attributes(), "messaging.system"); v != system {
		t.Errorf("publish span: messaging.system = %q, want %q", v, system)
	}
	// The handler's span, which must be a process span of the topic.
	proc := r.find(t, "process "+topic, trace.SpanKindConsumer, handler.SpanID(), timeout)
	if got := proc.Parent().SpanID(); got != pub.SpanContext().SpanID() || proc.SpanContext().TraceID() != caller.TraceID() {
		t.Errorf("process span: parent %v in trace %v, want the publish span %v in trace %v",
			got, proc.SpanContext().TraceID(), pub.SpanContext().SpanID(), caller.TraceID())
	}
	if !proc.Parent().IsRemote() {
		t.Errorf("process span: parent is not remote; it must come from the message's traceparent")
	}
	if v := attr(proc.Attributes(), "messaging.system"); v != system {
		t.Errorf("process span: messaging.system = %q, want %q", v, system)
	}
}

func attr(kvs []attribute.KeyValue, key string) string {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}
