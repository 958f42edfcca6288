package broker_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/steadfast-go/steadfast/broker"
)

// Middleware composes around a handler; the first one given is the outermost.
func ExampleChain() {
	logging := func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			err := next(ctx, d)
			fmt.Printf("handled %s attempt %d: err=%v\n", d.Payload, d.Attempt, err)
			return err
		}
	}
	h := broker.Chain(func(ctx context.Context, d broker.Delivery) error {
		if d.Attempt < 2 {
			return errors.New("not yet")
		}
		return nil
	}, logging)

	d := broker.Delivery{Message: broker.NewMessage("orders", []byte("order-1")), Attempt: 1}
	_ = h(context.Background(), d)
	d.Attempt = 2
	_ = h(context.Background(), d)
	// Output:
	// handled order-1 attempt 1: err=not yet
	// handled order-1 attempt 2: err=<nil>
}

// Bad input is an error callers can test, never a panic.
func ExampleMessage_Validate() {
	err := broker.Message{Payload: []byte("no topic")}.Validate(0)
	fmt.Println(errors.Is(err, broker.ErrEmptyTopic))
	// Output: true
}
