package telemetry_test

import (
	"context"
	"errors"
	"maps"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
)

// TestPublishProcess: the helpers give the span tree every adapter emits,
// and StartPublish leaves the caller's header maps alone.
func TestPublishProcess(t *testing.T) {
	rec := telemetrytest.New(t)
	tr := telemetry.Tracer(rec.Provider, "test")
	ctx, caller := rec.Caller(context.Background())
	own := map[string]string{"k": "v"}
	msgs := []broker.Message{{ID: "1", Topic: "orders", Headers: own}}
	pctx, span := telemetry.StartPublish(ctx, tr, "test", msgs)
	if msgs[0].Headers[broker.HeaderTraceparent] == "" || !maps.Equal(own, map[string]string{"k": "v"}) {
		t.Fatalf("headers after StartPublish: %v (caller's map %v)", msgs[0].Headers, own)
	}
	if !trace.SpanFromContext(pctx).SpanContext().Equal(span.SpanContext()) {
		t.Fatal("StartPublish's ctx does not carry its span")
	}
	telemetry.End(span, nil)
	caller.End()

	d := broker.Delivery{Message: msgs[0], Group: "g", Attempt: 1}
	hctx, proc := telemetry.StartProcess(context.Background(), tr, "test", d)
	handler := trace.SpanContextFromContext(hctx)
	telemetry.End(proc, errors.New("handler failed"))
	rec.CheckPublishProcess(t, "test", "orders", caller.SpanContext(), handler)
}

// TestTraceHeaders: nothing without a span context; a traceparent already
// in the headers wins.
func TestTraceHeaders(t *testing.T) {
	if th := telemetry.TraceHeaders(context.Background(), nil); th != nil {
		t.Errorf("TraceHeaders without a span = %v", th)
	}
	rec := telemetrytest.New(t)
	ctx, span := rec.Caller(context.Background())
	defer span.End()
	th := telemetry.TraceHeaders(ctx, nil)
	if th[broker.HeaderTraceparent] == "" {
		t.Fatalf("TraceHeaders = %v", th)
	}
	mine := map[string]string{broker.HeaderTraceparent: "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"}
	if got := telemetry.WithTraceHeaders(mine, th); got[broker.HeaderTraceparent] != mine[broker.HeaderTraceparent] {
		t.Errorf("the message's own traceparent was replaced: %v", got)
	}
	if got := telemetry.WithTraceHeaders(nil, th); !maps.Equal(got, th) {
		t.Errorf("WithTraceHeaders(nil) = %v, want %v", got, th)
	}
}

// TestContinue: a handler context whose span is in the delivery's trace is
// kept; one in another trace, or without a span, takes the headers'
// context.
func TestContinue(t *testing.T) {
	rec := telemetrytest.New(t)
	tr := telemetry.Tracer(rec.Provider, "test")
	ctx, sender := rec.Caller(context.Background())
	h := telemetry.Inject(ctx, nil)
	sender.End()
	proc, span := tr.Start(telemetry.Extract(context.Background(), h), "process t")
	defer span.End()
	if got := telemetry.Continue(proc, h); trace.SpanContextFromContext(got).SpanID() != span.SpanContext().SpanID() {
		t.Errorf("Continue replaced the delivery's process span")
	}
	other, o := tr.Start(context.Background(), "unrelated")
	defer o.End()
	if got := telemetry.Continue(other, h); trace.SpanContextFromContext(got).SpanID() != sender.SpanContext().SpanID() {
		t.Errorf("Continue kept a span of another trace")
	}
	if got := telemetry.Continue(context.Background(), h); trace.SpanContextFromContext(got).SpanID() != sender.SpanContext().SpanID() {
		t.Errorf("Continue without a span did not take the headers' context")
	}
	if got := telemetry.Continue(other, nil); trace.SpanContextFromContext(got).SpanID() != o.SpanContext().SpanID() {
		t.Errorf("Continue without headers changed the context")
	}
}
