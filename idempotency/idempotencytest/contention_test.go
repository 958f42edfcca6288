package idempotencytest_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/idempotencytest"
)

// Contention really overlaps the deliveries: the holder is released only
// after every other goroutine was answered "in progress", and retries end
// when the handler succeeds.
func TestContention(t *testing.T) {
	const n = 10
	var held, effects atomic.Int64
	c := idempotencytest.NewContention(n)
	h := func(ctx context.Context, d broker.Delivery) error {
		if !held.CompareAndSwap(0, 1) {
			if effects.Load() == 0 {
				return fmt.Errorf("busy: %w", idempotency.ErrInProgress)
			}
			return nil // done: a duplicate
		}
		c.Hold()
		effects.Add(1)
		return nil
	}
	c.Deliver(context.Background(), t, broker.Delivery{}, h)
	if effects.Load() != 1 || c.InProgress() < n-1 {
		t.Fatalf("%d effects, %d in-progress answers; want 1 and at least %d", effects.Load(), c.InProgress(), n-1)
	}
}
