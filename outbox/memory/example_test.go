package memory_test

import (
	"context"
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/memory"
)

// A transaction that fails writes nothing; one that commits is published by
// a relay, in order per key.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, _ := memory.New(memory.Config{})
	b := brokermem.New(brokermem.Config{})
	defer b.Close()

	err := store.BeginFunc(ctx, func(tx *memory.Tx) error {
		_ = tx.Enqueue(ctx, broker.NewMessage("orders", []byte("order-1 created")))
		return fmt.Errorf("out of stock")
	})
	fmt.Println("first order:", err)
	_ = store.BeginFunc(ctx, func(tx *memory.Tx) error {
		for _, ev := range []string{"created", "paid"} {
			m := broker.NewMessage("orders", []byte("order-2 "+ev))
			m.Key = "order-2"
			if err := tx.Enqueue(ctx, m); err != nil {
				return err
			}
		}
		return nil
	})

	relay, _ := outbox.NewRelay(store, b, outbox.Config{})
	go func() { _ = relay.Run(ctx) }()
	got := make(chan string)
	go func() {
		_ = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "mail"},
			func(_ context.Context, d broker.Delivery) error { got <- string(d.Payload); return nil })
	}()
	fmt.Println(<-got)
	fmt.Println(<-got)
	// Output:
	// first order: out of stock
	// order-2 created
	// order-2 paid
}
