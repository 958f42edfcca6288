package telemetry_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
)

// TestSpansProcess: with the global provider and no SDK installed, Process
// starts no span but hands the handler the delivery's trace context; once
// an SDK is installed globally, the same Spans records process spans. (It
// sets the global provider, which no other test of this package reads.)
func TestSpansProcess(t *testing.T) {
	const parent = "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"
	d := broker.Delivery{Message: broker.Message{ID: "1", Topic: "orders", Headers: map[string]string{broker.HeaderTraceparent: parent}}}
	spans := telemetry.NewSpans(nil, "test", "test")
	if telemetry.Recording(nil) {
		t.Fatal("Recording(nil) before any SDK was installed")
	}
	ctx, span := spans.Process(context.Background(), d)
	if span.IsRecording() || span.SpanContext().IsValid() {
		t.Error("a span was started while nothing can record it")
	}
	if sc := trace.SpanContextFromContext(ctx); sc.TraceID().String() != "0102030405060708090a0b0c0d0e0f10" || !sc.IsRemote() {
		t.Errorf("handler context carries %v, want the delivery's remote span context", sc)
	}

	rec := telemetrytest.New(t)
	otel.SetTracerProvider(rec.Provider)
	if !telemetry.Recording(nil) || !telemetry.Recording(rec.Provider) {
		t.Fatal("Recording false with an SDK installed")
	}
	ctx, span = spans.Process(context.Background(), d)
	if !span.IsRecording() {
		t.Fatal("no span recorded through the global provider once an SDK is installed")
	}
	telemetry.End(span, nil)
	if got := rec.Span(t, "process orders", trace.SpanKindConsumer, 0); got.Parent().SpanID().String() != "0102030405060708" {
		t.Errorf("process span parent %v", got.Parent().SpanID())
	}
	_ = ctx
}
