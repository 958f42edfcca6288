package idempotencytest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
)

// Contention delivers one message to many goroutines at once, the way a
// broker that redelivers (or a producer that retried) can, and makes sure
// they really overlap. Use it to show that a deduplicated handler makes one
// effect however the deliveries race:
//
//	c := idempotencytest.NewContention(50)
//	h := broker.Chain(func(ctx context.Context, d broker.Delivery) error {
//		c.Hold() // the first call keeps the key until the others have met it
//		return addOneToCounterRow(ctx)
//	}, dedup)
//	c.Deliver(ctx, t, d, h)
//	// now assert the counter row is 1
type Contention struct {
	n        int
	seen     atomic.Int64
	released chan struct{}
	once     sync.Once
	held     atomic.Bool
	// Pause is how long a goroutine waits before redelivering after an
	// in-progress answer. Default 2ms.
	Pause time.Duration
	// MaxHold bounds how long Hold blocks (liveness only). Default 60s.
	MaxHold time.Duration
}

// NewContention returns a Contention for n goroutines.
func NewContention(n int) *Contention {
	return &Contention{n: max(n, 1), released: make(chan struct{}), Pause: 2 * time.Millisecond, MaxHold: time.Minute}
}

// Hold blocks the first caller until every other goroutine has been answered
// "in progress" at least once (so all of them met the key held), or MaxHold
// passed. Later callers return at once: with working deduplication there are
// none while the first holds the key.
func (c *Contention) Hold() {
	if !c.held.CompareAndSwap(false, true) {
		return
	}
	t := time.NewTimer(c.MaxHold)
	defer t.Stop()
	select {
	case <-c.released:
	case <-t.C:
	}
}

// InProgress returns how many in-progress answers Deliver has seen.
func (c *Contention) InProgress() int { return int(c.seen.Load()) }

// Deliver hands d to n goroutines at once, each calling h until it returns
// nil, and returns when all have. An error wrapping idempotency.ErrInProgress
// is retried after Pause, as a broker redelivers; any other error, or ctx
// ending, fails t.
func (c *Contention) Deliver(ctx context.Context, t testing.TB, d broker.Delivery, h broker.Handler) {
	t.Helper()
	var (
		wg       sync.WaitGroup
		start    = make(chan struct{})
		firstErr atomic.Value
	)
	contenders := make(map[int]bool, c.n)
	var mu sync.Mutex
	for i := range c.n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				err := h(ctx, d)
				if err == nil {
					return
				}
				if !errors.Is(err, idempotency.ErrInProgress) || ctx.Err() != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				c.seen.Add(1)
				mu.Lock()
				contenders[i] = true
				if len(contenders) >= c.n-1 {
					c.once.Do(func() { close(c.released) })
				}
				mu.Unlock()
				time.Sleep(c.Pause)
			}
		}()
	}
	close(start)
	wg.Wait()
	c.once.Do(func() { close(c.released) })
	if err, _ := firstErr.Load().(error); err != nil {
		t.Fatalf("idempotencytest: a concurrent delivery failed: %v", err)
	}
}
