package outboxtest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
)

// A Store implementation proves itself with Run: the store cases, then the
// relay cases on the memory broker. RunRelay repeats the relay cases on a
// real broker. (myStore is a placeholder for your implementation.)
func ExampleRun() {
	_ = func(t *testing.T) {
		outboxtest.Run(t, func(t *testing.T) outboxtest.Harness {
			store := newMyStore(t) // a fresh, empty outbox for each case
			return outboxtest.Harness{
				Store: store,
				Enqueue: func(ctx context.Context, msgs ...broker.Message) error {
					return store.enqueue(ctx, msgs...)
				},
			}
		}, outboxtest.Options{})
	}
}

// Tally is what the relay cases use to check a consumer: distinct messages,
// duplicates, and per-key order of first deliveries.
func ExampleTally() {
	c := outboxtest.NewTally(3)
	a0 := outboxtest.SeqMessage("orders", "a", 0)
	a1 := outboxtest.SeqMessage("orders", "a", 1)
	b0 := outboxtest.SeqMessage("orders", "b", 0)
	for _, m := range []broker.Message{a0, b0, a1, a0} { // a0 redelivered
		c.Add(m)
	}
	fmt.Println("distinct:", c.Distinct(), "duplicates:", c.Duplicates(), "a0 delivered:", c.Count(a0.ID))
	// Output:
	// distinct: 3 duplicates: 1 a0 delivered: 2
}

type myStore struct{ outbox.Store }

func newMyStore(*testing.T) *myStore { return &myStore{} }

func (*myStore) enqueue(context.Context, ...broker.Message) error { return nil }
