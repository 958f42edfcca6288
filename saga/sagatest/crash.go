package sagatest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

// CrashPoint is a step boundary at which the crash case kills the engine.
type CrashPoint int

// Crash points.
const (
	// CrashReplyArrived: a reply reached the engine, before anything was
	// recorded.
	CrashReplyArrived CrashPoint = iota
	// CrashBeforeCommit: a transition was decided and written, before its
	// transaction committed.
	CrashBeforeCommit
	// CrashAfterCommit: a transition committed, before the engine
	// acknowledged the reply (or finished the timer, or returned from
	// Start).
	CrashAfterCommit
	// CrashAfterSend: the outbox published a command or reply, before it
	// recorded that it did (it publishes it again).
	CrashAfterSend
)

func (p CrashPoint) String() string {
	return [...]string{"ReplyArrived", "BeforeCommit", "AfterCommit", "AfterSend"}[p]
}

// errCrashed is what every call of a killed engine fails with.
var errCrashed = errors.New("sagatest: engine killed")

// crasher kills an engine at the n-th hit of its armed point: from then on
// every store call of that engine fails, its pending reply deliveries
// fail, and kills is signalled, until revive.
type crasher struct {
	mu      sync.Mutex
	point   CrashPoint
	left    int
	dead    bool
	crashes int
	kills   chan struct{}
}

func (c *crasher) arm(p CrashPoint, after int) {
	c.mu.Lock()
	c.point, c.left, c.dead = p, after, false
	c.mu.Unlock()
}

func (c *crasher) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// hit reports whether the engine dies at p now.
func (c *crasher) hit(p CrashPoint) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || p != c.point || c.left <= 0 {
		return false
	}
	c.left--
	if c.left > 0 {
		return false
	}
	c.dead = true
	c.crashes++
	select {
	case c.kills <- struct{}{}:
	default:
	}
	return true
}

type crashStore struct {
	saga.Store
	c *crasher
}

func (s *crashStore) Begin(ctx context.Context) (saga.StoreTx, error) {
	if s.c.isDead() {
		return nil, errCrashed
	}
	tx, err := s.Store.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &crashTx{StoreTx: tx, c: s.c}, nil
}

func (s *crashStore) ClaimDue(ctx context.Context, keys []saga.DefinitionKey, fn func(ctx context.Context, tx saga.StoreTx, inst saga.Instance) error) (bool, error) {
	if s.c.isDead() {
		return false, errCrashed
	}
	ok, err := s.Store.ClaimDue(ctx, keys, func(ctx context.Context, tx saga.StoreTx, inst saga.Instance) error {
		if err := fn(ctx, &crashTx{StoreTx: tx, c: s.c}, inst); err != nil {
			return err
		}
		if s.c.isDead() || s.c.hit(CrashBeforeCommit) {
			return errCrashed
		}
		return nil
	})
	if err == nil && ok && s.c.hit(CrashAfterCommit) {
		return ok, errCrashed
	}
	return ok, err
}

type crashTx struct {
	saga.StoreTx
	c *crasher
}

func (t *crashTx) Load(ctx context.Context, id, msg string) (saga.Instance, bool, error) {
	if t.c.isDead() {
		return saga.Instance{}, false, errCrashed
	}
	return t.StoreTx.Load(ctx, id, msg)
}

func (t *crashTx) Create(ctx context.Context, c saga.Change) (bool, error) {
	if t.c.isDead() {
		return false, errCrashed
	}
	return t.StoreTx.Create(ctx, c)
}

func (t *crashTx) Save(ctx context.Context, c saga.Change) error {
	if t.c.isDead() {
		return errCrashed
	}
	return t.StoreTx.Save(ctx, c)
}

func (t *crashTx) Commit(ctx context.Context) error {
	if t.c.isDead() || t.c.hit(CrashBeforeCommit) {
		_ = t.StoreTx.Rollback(ctx)
		return errCrashed
	}
	if err := t.StoreTx.Commit(ctx); err != nil {
		return err
	}
	if t.c.hit(CrashAfterCommit) {
		return errCrashed
	}
	return nil
}

func caseCrash(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	h.StartParticipants(nil)
	c := &crasher{kills: make(chan struct{}, 1)}
	h.pub.setHook(func(ctx context.Context, msgs []broker.Message) error {
		if c.hit(CrashAfterSend) {
			return fmt.Errorf("%w: %w", broker.ErrUnavailable, errCrashed)
		}
		return nil
	})
	store := &crashStore{Store: h.Stores.Store, c: c}
	wrap := func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			if c.isDead() || c.hit(CrashReplyArrived) {
				return errCrashed
			}
			return next(ctx, d)
		}
	}
	for _, p := range []CrashPoint{CrashReplyArrived, CrashBeforeCommit, CrashAfterCommit, CrashAfterSend} {
		ids := make([]string, h.F.CrashOrders)
		for i := range ids {
			ids[i] = fmt.Sprintf("crash-%s-%d", p, i)
		}
		started := map[string]bool{}
		crashesBefore := c.crashes
		const maxCrashes = 4
		first := false // arm at the point's first hit
		for round := 0; ; round++ {
			armed := c.crashes-crashesBefore < maxCrashes
			if armed {
				n := 1 + rand.IntN(12)
				if first {
					n = 1
				}
				c.arm(p, n)
			} else {
				c.arm(p, 0)
			}
			eng, stop := h.StartEngine(EngineOptions{Store: store, Defs: []saga.AnyDefinition{def}, Wrap: wrap})
			for _, id := range ids {
				if started[id] {
					continue
				}
				if _, err := saga.Start(h.Ctx(), eng, def, id, Order{ID: id, Refuse: Refused(id)}); err != nil {
					if !errors.Is(err, errCrashed) {
						t.Fatalf("start %s: %v", id, err)
					}
					break
				}
				started[id] = true
			}
			killed := false
			deadline := time.After(h.F.Timeout)
		wait:
			for {
				select {
				case <-c.kills:
					killed = true
					break wait
				case <-deadline:
					t.Fatalf("%s: round %d: instances not finished after %v", p, round, h.F.Timeout)
				case <-time.After(20 * time.Millisecond):
					if len(started) == len(ids) && h.allFinished(h.Stores.Store, ids) {
						break wait
					}
				}
			}
			stop()
			if !killed {
				if c.crashes == crashesBefore && round < 10 {
					// The point was hit fewer times than armed (the outbox
					// batched what it sent, say): more orders, and the
					// engine dies at the first hit.
					for i := range 2 {
						ids = append(ids, fmt.Sprintf("crash-%s-extra%d-%d", p, round, i))
					}
					first = true
					continue
				}
				break
			}
		}
		got := h.WaitFinished(h.Stores.Store, ids, false)
		completed, compensated := h.CheckOrders(h.Stores.Store, got)
		if compensated != wantRefused(ids) || completed != len(ids)-wantRefused(ids) {
			t.Errorf("%s: completed %d, compensated %d", p, completed, compensated)
		}
		if n := c.crashes - crashesBefore; n == 0 {
			t.Errorf("%s: the engine was never killed", p)
		} else {
			t.Logf("%s: killed %d times; every instance finished exactly once", p, n)
		}
	}
	h.pub.setHook(nil)
}

func (h *Harness) allFinished(store saga.Store, ids []string) bool {
	for _, id := range ids {
		in, err := store.Get(h.Ctx(), id)
		if err != nil || !in.Status.Finished() {
			return false
		}
	}
	return true
}
