package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/dlq"
)

type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// A handler marks decode and validation errors permanent; everything else
// is retried. The message that cannot be decoded goes to the dead-letter
// topic at once; the one that keeps failing goes there after MaxAttempts.
func Example() {
	b := brokermem.New(brokermem.Config{})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c, err := dlq.New(dlq.Config{
		Publisher:  b,
		Subscriber: b,
		Policy:     dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Millisecond}},
		Name:       "billing.charge",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, body := range []string{`{"id":"A-1","amount":5}`, `{"id":`, `{"id":"A-3","amount":-1}`, `{"id":"A-4","amount":9}`} {
		if err := b.Publish(ctx, broker.NewMessage("orders", []byte(body))); err != nil {
			fmt.Println(err)
			return
		}
	}

	go func() {
		_ = c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing", Concurrency: 1},
			func(_ context.Context, d broker.Delivery) error {
				var o order
				if err := json.Unmarshal(d.Payload, &o); err != nil {
					return dlq.Permanent(fmt.Errorf("decode order: %w", err))
				}
				if o.Amount < 0 {
					return errors.New("payment provider refused the charge") // transient
				}
				return nil
			})
	}()
	for len(b.Published("orders.billing.dlq")) < 2 || b.Pending("orders", "billing") > 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()

	for _, m := range b.Published("orders.billing.dlq") {
		e, _ := dlq.ParseEnvelope(m.Headers)
		fmt.Printf("%s: %s after %d attempt(s) by %s/%s: %s\n", m.Payload, e.Class, e.Attempts, e.Group, e.Handler, e.Error)
	}
	// Output:
	// {"id":: permanent after 1 attempt(s) by billing/billing.charge: decode order: unexpected end of JSON input
	// {"id":"A-3","amount":-1}: transient after 3 attempt(s) by billing/billing.charge: payment provider refused the charge
}
