package dlq_test

import (
	"context"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/dlq"
)

// BenchmarkHandler measures the middleware's cost on the success path, the
// one every message takes: raw calls a handler directly, steadfast calls it
// through Consumer.Middleware.
func BenchmarkHandler(b *testing.B) {
	h := func(context.Context, broker.Delivery) error { return nil }
	d := broker.Delivery{Message: broker.NewMessage("orders", []byte("x")), Attempt: 1, Group: "g", Partition: 0, Offset: 1}
	ctx := context.Background()
	b.Run("success/raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = h(ctx, d)
		}
	})
	b.Run("success/steadfast", func(b *testing.B) {
		mb := memory.New(memory.Config{})
		defer mb.Close()
		c, err := dlq.New(dlq.Config{Publisher: mb})
		if err != nil {
			b.Fatal(err)
		}
		wrapped := c.Middleware()(h)
		b.ReportAllocs()
		for b.Loop() {
			_ = wrapped(ctx, d)
		}
	})
}
