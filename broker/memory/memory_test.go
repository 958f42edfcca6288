package memory_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
)

func TestConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Features{
		ConsumerGroups: true,
		Persistent:     true,
		PerKeyOrder:    true,
		ExactlyOnce:    true,
	}, func(t *testing.T) brokertest.Backend {
		b := memory.New(memory.Config{})
		t.Cleanup(func() { b.Close() })
		return brokertest.Backend{Publisher: b, Subscriber: b}
	})
}

func TestCloseStopsSubscribers(t *testing.T) {
	b := memory.New(memory.Config{})
	done := make(chan error, 1)
	var handled atomic.Int64
	go func() {
		done <- b.Subscribe(context.Background(), broker.Subscription{Topic: "t", Group: "g"}, func(context.Context, broker.Delivery) error {
			handled.Add(1)
			return nil
		})
	}()
	if err := b.Publish(context.Background(), broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	for handled.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, broker.ErrClosed) {
			t.Fatalf("Subscribe after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Subscribe did not return after Close")
	}
	if err := b.Publish(context.Background(), broker.NewMessage("t", nil)); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Publish after Close = %v, want ErrClosed", err)
	}
	if err := b.Subscribe(context.Background(), broker.Subscription{Topic: "t", Group: "g"}, func(context.Context, broker.Delivery) error { return nil }); !errors.Is(err, broker.ErrClosed) {
		t.Fatalf("Subscribe on closed broker = %v, want ErrClosed", err)
	}
}

func TestHandlerPanicRedelivers(t *testing.T) {
	b := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(time.Millisecond)})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.Publish(ctx, broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 2)
	go b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		if d.Attempt == 1 {
			panic("boom")
		}
		got <- d.Attempt
		return nil
	})
	select {
	case a := <-got:
		if a != 2 {
			t.Fatalf("attempt after panic = %d, want 2", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("message lost after handler panic")
	}
	if p := b.Pending("t", "g"); p != 0 {
		// The ack is recorded right after the handler returns.
		time.Sleep(50 * time.Millisecond)
		if p = b.Pending("t", "g"); p != 0 {
			t.Fatalf("pending = %d after success, want 0", p)
		}
	}
}

func TestDrainTimeoutCancelsHandlerContext(t *testing.T) {
	b := memory.New(memory.Config{DrainTimeout: 50 * time.Millisecond})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	if err := b.Publish(ctx, broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: "g"}, func(hctx context.Context, d broker.Delivery) error {
			close(started)
			<-hctx.Done()
			return hctx.Err()
		})
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Subscribe = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler context not cancelled after the drain timeout")
	}
	// The handler failed, so the message is still pending.
	if p := b.Pending("t", "g"); p != 1 {
		t.Fatalf("pending = %d, want 1", p)
	}
}

// TestInvalidConfig: a config out of range (a negative backoff, a negative
// timeout) is rejected with ErrInvalidConfig by every call, never used.
func TestInvalidConfig(t *testing.T) {
	h := func(context.Context, broker.Delivery) error { return nil }
	for _, cfg := range []memory.Config{
		{RedeliveryBackoff: broker.Backoff{Initial: -time.Second}},
		{RedeliveryBackoff: broker.Backoff{Initial: time.Minute, Max: time.Second}},
		{DrainTimeout: -1},
		{MaxMessageBytes: -1},
	} {
		if err := cfg.Validate(); !errors.Is(err, memory.ErrInvalidConfig) {
			t.Errorf("%+v: Validate = %v, want ErrInvalidConfig", cfg, err)
		}
		b := memory.New(cfg)
		if err := b.Publish(context.Background(), broker.NewMessage("t", nil)); !errors.Is(err, memory.ErrInvalidConfig) {
			t.Errorf("%+v: Publish = %v, want ErrInvalidConfig", cfg, err)
		}
		if err := b.Subscribe(context.Background(), broker.Subscription{Topic: "t", Group: "g"}, h); !errors.Is(err, memory.ErrInvalidConfig) {
			t.Errorf("%+v: Subscribe = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if err := (memory.Config{RedeliveryBackoff: broker.Backoff{Initial: -1}}).Validate(); !errors.Is(err, broker.ErrInvalidBackoff) {
		t.Errorf("negative backoff: %v, want ErrInvalidBackoff too", err)
	}
}

// TestSpans: Publish emits a producer span under the caller's, and the
// handler runs in a consumer span parented by it through the message's
// traceparent (the telemetry rule every adapter follows).
func TestSpans(t *testing.T) {
	rec := telemetrytest.New(t)
	b := memory.New(memory.Config{TracerProvider: rec.Provider})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pctx, caller := rec.Caller(ctx)
	if err := b.Publish(pctx, broker.NewMessage("traced", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	caller.End()
	seen := make(chan trace.SpanContext, 1)
	go b.Subscribe(ctx, broker.Subscription{Topic: "traced", Group: "g"}, func(hctx context.Context, _ broker.Delivery) error {
		seen <- trace.SpanContextFromContext(hctx)
		return nil
	})
	select {
	case sc := <-seen:
		rec.CheckPublishProcess(t, "memory", "traced", caller.SpanContext(), sc)
	case <-time.After(10 * time.Second):
		t.Fatal("message not delivered")
	}
}

// What a publisher changes after Publish, and what one group's handler
// changes in its delivery, reaches nobody else (run with -race: two groups
// editing their deliveries' headers at once is no data race).
func TestMessagesAreCopied(t *testing.T) {
	b := memory.New(memory.Config{})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := broker.NewMessage("t", []byte("original"))
	m.Headers = map[string]string{"h": "original"}
	if err := b.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	copy(m.Payload, "MUTATED!")
	m.Headers["h"] = "mutated"
	m.Headers["extra"] = "x"

	type seen struct{ payload, header string }
	got := make(chan seen, 4)
	for _, g := range []string{"a", "b", "c", "d"} {
		go b.Subscribe(ctx, broker.Subscription{Topic: "t", Group: g}, func(_ context.Context, d broker.Delivery) error {
			got <- seen{string(d.Payload), d.Headers["h"] + "/" + d.Headers["extra"]}
			d.Headers["h"] = "changed by " + g
			d.Payload[0] = 'X'
			return nil
		})
	}
	for range 4 {
		select {
		case s := <-got:
			if s.payload != "original" || s.header != "original/" {
				t.Fatalf("delivery saw payload %q, headers %q; want what was published", s.payload, s.header)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("message not delivered to every group")
		}
	}
	for _, p := range b.Published("t") {
		if string(p.Payload) != "original" || p.Headers["h"] != "original" {
			t.Fatalf("Published() = %q %v after handlers edited their deliveries", p.Payload, p.Headers)
		}
	}
}
