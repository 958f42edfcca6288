package outbox_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/memory"
)

// TestTraceThroughRelay: the relay's publish of a row is the child of the
// span that enqueued it, and the consumer's process span the child of the
// relay's publish: one trace from the enqueuing request to the handler,
// though the relay publishes from a context of its own. A message without
// a trace context gets none from the relay's message spans.
func TestTraceThroughRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec := telemetrytest.New(t)
	store, _ := memory.New(memory.Config{})
	b := brokermem.New(brokermem.Config{TracerProvider: rec.Provider})
	defer b.Close()

	reqCtx, req := rec.Caller(ctx)
	m := broker.NewMessage("orders", []byte("order-1 created"))
	m.Key = "order-1"
	if err := store.Enqueue(reqCtx, m); err != nil {
		t.Fatal(err)
	}
	req.End()
	bare := broker.NewMessage("orders", []byte("no trace"))
	if err := store.Enqueue(ctx, bare); err != nil {
		t.Fatal(err)
	}

	relay, err := outbox.NewRelay(store, b, outbox.Config{TracerProvider: rec.Provider})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()
	handled := make(chan trace.SpanContext, 2)
	go func() {
		_ = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(ctx context.Context, d broker.Delivery) error {
			if d.ID == m.ID {
				handled <- trace.SpanContextFromContext(ctx)
			}
			return nil
		})
	}()
	var handler trace.SpanContext
	select {
	case handler = <-handled:
	case <-ctx.Done():
		t.Fatal("message not delivered")
	}

	// The relay's span for the message: a producer span named after the
	// topic, the child of the request span, linked to the batch span.
	var relaySpan, batchSpan trace.SpanContext
	deadline := time.Now().Add(30 * time.Second)
	for !relaySpan.IsValid() && time.Now().Before(deadline) {
		for _, s := range rec.Ended() {
			if s.Name() == "publish orders" && s.Parent().SpanID() == req.SpanContext().SpanID() {
				relaySpan = s.SpanContext()
				if s.SpanKind() != trace.SpanKindProducer || s.InstrumentationScope().Name != "github.com/steadfast-go/steadfast/outbox" {
					t.Errorf("relay publish span: kind %v scope %q", s.SpanKind(), s.InstrumentationScope().Name)
				}
				if len(s.Links()) != 1 {
					t.Errorf("relay publish span has %d links, want 1 (the batch span)", len(s.Links()))
				} else {
					batchSpan = s.Links()[0].SpanContext
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !relaySpan.IsValid() {
		t.Fatal("no relay publish span that is the child of the request span")
	}
	if relaySpan.TraceID() != req.SpanContext().TraceID() {
		t.Errorf("relay publish span in trace %v, want the request's %v", relaySpan.TraceID(), req.SpanContext().TraceID())
	}
	for _, s := range rec.Ended() {
		if s.SpanContext().SpanID() == batchSpan.SpanID() && s.Name() != "outbox publish" {
			t.Errorf("the relay publish span links to %q, want the batch span", s.Name())
		}
	}
	proc := rec.Span(t, "process orders", trace.SpanKindConsumer, 30*time.Second)
	for _, s := range rec.Ended() {
		if s.Name() == "process orders" && s.SpanContext().SpanID() == handler.SpanID() {
			proc = s
		}
	}
	if proc.SpanContext().SpanID() != handler.SpanID() {
		t.Fatalf("the handler's span is not a process span")
	}
	if proc.Parent().SpanID() != relaySpan.SpanID() || proc.SpanContext().TraceID() != req.SpanContext().TraceID() {
		t.Errorf("process span: parent %v in trace %v, want the relay's publish span %v in trace %v",
			proc.Parent().SpanID(), proc.SpanContext().TraceID(), relaySpan.SpanID(), req.SpanContext().TraceID())
	}
	n := 0
	for _, s := range rec.Ended() {
		if s.Name() == "publish orders" && s.InstrumentationScope().Name == "github.com/steadfast-go/steadfast/outbox" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d relay message spans, want 1 (the message without trace context gets none)", n)
	}
}
