package memory_test

import (
	"context"
	"fmt"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
)

// A handler unit test with the memory broker: publish, consume until done,
// inspect what was published.
func Example() {
	b := brokermem.New(brokermem.Config{})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	for _, id := range []string{"A-1", "A-2"} {
		m := broker.NewMessage("orders", []byte(id))
		m.Key = "customer-7"
		if err := b.Publish(ctx, m); err != nil {
			fmt.Println("publish:", err)
			return
		}
	}

	seen := 0
	err := b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"},
		func(_ context.Context, d broker.Delivery) error {
			fmt.Printf("billing %s (attempt %d)\n", d.Payload, d.Attempt)
			if seen++; seen == 2 {
				cancel() // stop after both; the ack of this one is kept
			}
			return nil
		})
	fmt.Println("subscribe returned:", err, "pending:", b.Pending("orders", "billing"))
	// Output:
	// billing A-1 (attempt 1)
	// billing A-2 (attempt 1)
	// subscribe returned: <nil> pending: 0
}
