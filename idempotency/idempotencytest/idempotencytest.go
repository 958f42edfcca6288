// Package idempotencytest is the conformance suite every idempotency.Store
// runs. A store's test calls Run with the features it promises and a factory
// that returns a fresh store:
//
//	func TestConformance(t *testing.T) {
//		idempotencytest.Run(t, idempotencytest.Features{LeaseExpiry: true},
//			func(t *testing.T, o idempotencytest.Options) idempotency.Store {
//				s, err := idemmem.New(idemmem.Config{Lease: o.Lease})
//				if err != nil {
//					t.Fatal(err)
//				}
//				return s
//			})
//	}
//
// The suite checks the port's contract directly (claim, complete, release,
// in progress, scopes, bad input, 50 concurrent claims of one key, lease
// expiry where promised), then through the consumer middleware on the
// in-memory broker (duplicates acknowledged without the handler, a failed
// handler's redelivery processed, a crash between the effect and the ack,
// 50 concurrent deliveries of one message making one effect) and through
// the HTTP middleware with httptest (replay, 409, 422, 400, concurrent
// identical requests). Every case asserts exact counts; none asserts timing.
package idempotencytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/idempotency"
)

// Features declares what a store promises beyond the port's contract.
// Cases for promises a store does not make are skipped with a message naming
// the feature.
type Features struct {
	// LeaseExpiry: a lease its holder neither completes nor releases ends
	// by itself after Options.Lease, another Acquire then takes the key over,
	// and the first holder's Complete returns ErrLeaseLost.
	LeaseExpiry bool
	// Timeout bounds every wait of a case (liveness only, never asserted).
	// Default 60s.
	Timeout time.Duration
}

// Options are what a case asks of the store the factory returns.
type Options struct {
	// Lease is the lease time the store should use, when non-zero. Stores
	// without Features.LeaseExpiry may ignore it. Cases that hold keys
	// across waits ask for a long lease; the lease-expiry case asks for a
	// short one.
	Lease time.Duration
}

// Factory returns a fresh store for one case and registers its cleanup with
// t.Cleanup. The store must report a key held by another caller as
// ErrInProgress within a short time (for the Postgres store: the default
// Config.Wait of zero, or a wait of a few hundred milliseconds at most), as
// cases wait for that answer.
type Factory func(t *testing.T, o Options) idempotency.Store

// Run runs the suite. Cases run in parallel, each with its own store from
// factory and its own scopes.
func Run(t *testing.T, f Features, factory Factory) {
	if f.Timeout <= 0 {
		f.Timeout = 60 * time.Second
	}
	s := &suite{f: f, factory: factory}
	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Store", s.storeCases()},
		{"Consumer", s.consumerCases()},
		{"HTTP", s.httpCases()},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, c := range g.cases {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					c.fn(t)
				})
			}
		})
	}
}

type testCase struct {
	name string
	fn   func(*testing.T)
}

type suite struct {
	f       Features
	factory Factory
}

// longLease outlives any case, so leases end only when a case ends them.
const longLease = 10 * time.Minute

func (s *suite) store(t *testing.T, lease time.Duration) idempotency.Store {
	t.Helper()
	st := s.factory(t, Options{Lease: lease})
	if st == nil {
		t.Fatal("idempotencytest: factory returned a nil store")
	}
	return st
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.f.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// unique returns a name unique to this call, so cases never share keys even
// when a factory hands out one store to all of them.
func unique(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

func (s *suite) storeCases() []testCase {
	return []testCase{
		{"CompleteThenDuplicate", s.completeThenDuplicate},
		{"InProgressThenRelease", s.inProgressThenRelease},
		{"EndLeaseOnce", s.endLeaseOnce},
		{"ScopesAreSeparate", s.scopesAreSeparate},
		{"EmptyValues", s.emptyValues},
		{"BadInput", s.badInput},
		{"ConcurrentAcquire", s.concurrentAcquire},
		{"LeaseExpiry", s.leaseExpiry},
	}
}

// mustAcquire acquires a key that must be free.
func mustAcquire(ctx context.Context, t *testing.T, st idempotency.Store, scope, key string, fp []byte) idempotency.Lease {
	t.Helper()
	lease, rec, err := st.Acquire(ctx, scope, key, fp)
	if err != nil || rec != nil || lease == nil {
		t.Fatalf("Acquire(%q, %q) of a free key = (%v, %+v, %v), want a lease", scope, key, lease, rec, err)
	}
	return lease
}

// mustBeDone acquires a key that must be done and returns its record.
func mustBeDone(ctx context.Context, t *testing.T, st idempotency.Store, scope, key string) *idempotency.Record {
	t.Helper()
	lease, rec, err := st.Acquire(ctx, scope, key, []byte("other"))
	if err != nil || rec == nil || lease != nil {
		t.Fatalf("Acquire(%q, %q) of a done key = (%v, %+v, %v), want a record", scope, key, lease, rec, err)
	}
	return rec
}

// mustBeInProgress acquires a key another lease holds.
func mustBeInProgress(ctx context.Context, t *testing.T, st idempotency.Store, scope, key string) {
	t.Helper()
	lease, rec, err := st.Acquire(ctx, scope, key, nil)
	if !errors.Is(err, idempotency.ErrInProgress) || lease != nil || rec != nil {
		t.Fatalf("Acquire(%q, %q) of a held key = (%v, %+v, %v), want ErrInProgress", scope, key, lease, rec, err)
	}
}

// Complete stores the response with the fingerprint of the Acquire; later
// Acquires get the record back, not a lease, whatever fingerprint they pass.
func (s *suite) completeThenDuplicate(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope, key := unique("scope"), unique("key")
	fp := []byte{0, 1, 2, 0xff}
	resp := []byte("response \x00 with binary \xff bytes")
	lease := mustAcquire(ctx, t, st, scope, key, fp)
	if err := lease.Complete(ctx, resp); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	for i := range 3 {
		rec := mustBeDone(ctx, t, st, scope, key)
		if !bytes.Equal(rec.Fingerprint, fp) || !bytes.Equal(rec.Response, resp) {
			t.Fatalf("read %d: record = {%q, %q}, want {%q, %q}", i, rec.Fingerprint, rec.Response, fp, resp)
		}
	}
}

// A held key is in progress for everyone else, never a duplicate; Release
// frees it and the next Acquire gets a lease.
func (s *suite) inProgressThenRelease(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope, key := unique("scope"), unique("key")
	lease := mustAcquire(ctx, t, st, scope, key, []byte("a"))
	mustBeInProgress(ctx, t, st, scope, key)
	mustBeInProgress(ctx, t, st, scope, key)
	if err := lease.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	again := mustAcquire(ctx, t, st, scope, key, []byte("b"))
	if err := again.Complete(ctx, []byte("second")); err != nil {
		t.Fatalf("Complete after re-acquire: %v", err)
	}
	if rec := mustBeDone(ctx, t, st, scope, key); string(rec.Fingerprint) != "b" || string(rec.Response) != "second" {
		t.Fatalf("record = {%q, %q}, want the second holder's {b, second}", rec.Fingerprint, rec.Response)
	}
}

// A lease ends once: a second Complete or Release returns ErrLeaseLost and
// changes nothing.
func (s *suite) endLeaseOnce(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope := unique("scope")

	done := mustAcquire(ctx, t, st, scope, "completed", nil)
	if err := done.Complete(ctx, []byte("r1")); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := done.Complete(ctx, []byte("r2")); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("second Complete = %v, want ErrLeaseLost", err)
	}
	if err := done.Release(ctx); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("Release after Complete = %v, want ErrLeaseLost", err)
	}
	if rec := mustBeDone(ctx, t, st, scope, "completed"); string(rec.Response) != "r1" {
		t.Fatalf("response = %q after ending the lease twice, want r1", rec.Response)
	}

	freed := mustAcquire(ctx, t, st, scope, "released", nil)
	if err := freed.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	next := mustAcquire(ctx, t, st, scope, "released", nil)
	if err := freed.Release(ctx); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("second Release = %v, want ErrLeaseLost", err)
	}
	if err := freed.Complete(ctx, nil); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("Complete after Release = %v, want ErrLeaseLost", err)
	}
	// The stale lease must not have touched the new holder's claim.
	mustBeInProgress(ctx, t, st, scope, "released")
	if err := next.Complete(ctx, nil); err != nil {
		t.Fatalf("Complete by the new holder: %v", err)
	}
}

// Keys are separate per scope, including scopes and keys built to collide
// when joined with a separator.
func (s *suite) scopesAreSeparate(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	base := unique("s")
	pairs := [][2]string{
		{base + "-a", "k"},
		{base + "-b", "k"},
		{base + "-a", "k2"},
		{base + ":x", "y"},
		{base, "x:y"},
		{base + "%3Ax", "y"},
		{base + " x", "y"},
		{base, "x y"},
		{base + "/x", "y"},
		{base, "/x/y"},
	}
	for _, p := range pairs {
		l := mustAcquire(ctx, t, st, p[0], p[1], []byte(p[0]+"|"+p[1]))
		if err := l.Complete(ctx, []byte(p[0]+"|"+p[1])); err != nil {
			t.Fatalf("Complete(%q, %q): %v", p[0], p[1], err)
		}
	}
	for _, p := range pairs {
		if rec := mustBeDone(ctx, t, st, p[0], p[1]); string(rec.Response) != p[0]+"|"+p[1] {
			t.Fatalf("(%q, %q) holds %q: keys of different scopes collided", p[0], p[1], rec.Response)
		}
	}
}

// Nil and empty fingerprints and responses round-trip as empty, and
// non-ASCII keys work.
func (s *suite) emptyValues(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope := unique("scope")
	keys := []string{"nil", "empty", "ünïcødé-ключ-键", strings.Repeat("k", idempotency.MaxKeyBytes)}
	for i, key := range keys {
		var v []byte
		if i > 0 {
			v = []byte{}
		}
		l := mustAcquire(ctx, t, st, scope, key, v)
		if err := l.Complete(ctx, v); err != nil {
			t.Fatalf("Complete(%q): %v", key, err)
		}
		if rec := mustBeDone(ctx, t, st, scope, key); len(rec.Fingerprint) != 0 || len(rec.Response) != 0 {
			t.Fatalf("key %q: record = {%q, %q}, want empty", key, rec.Fingerprint, rec.Response)
		}
	}
}

// Bad scopes and keys fail with ErrInvalidKey and claim nothing; a
// cancelled context fails without claiming.
func (s *suite) badInput(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope := unique("scope")
	bad := [][2]string{
		{"", "key"},
		{scope, ""},
		{strings.Repeat("s", idempotency.MaxScopeBytes+1), "key"},
		{scope, strings.Repeat("k", idempotency.MaxKeyBytes+1)},
		{scope, "nul\x00byte"},
		{scope, "bad utf-8 \xff"},
		{"bad utf-8 \xfe", "key"},
	}
	for _, b := range bad {
		lease, rec, err := st.Acquire(ctx, b[0], b[1], nil)
		if !errors.Is(err, idempotency.ErrInvalidKey) || lease != nil || rec != nil {
			t.Fatalf("Acquire(%q, %q) = (%v, %+v, %v), want ErrInvalidKey", b[0], b[1], lease, rec, err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if lease, rec, err := st.Acquire(cctx, scope, "cancelled", nil); err == nil || lease != nil || rec != nil {
		t.Fatalf("Acquire with a cancelled context = (%v, %+v, %v), want an error", lease, rec, err)
	}
	// Nothing was claimed by the failed calls.
	for _, key := range []string{"key", "cancelled"} {
		l := mustAcquire(ctx, t, st, scope, key, nil)
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// 50 goroutines acquire one key at once: exactly one gets a lease, which it
// holds until every other one has been answered; each of those gets
// ErrInProgress (never a duplicate: the key is not done yet). Once the
// holder completes, the key is done.
func (s *suite) concurrentAcquire(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	scope, key := unique("scope"), unique("key")
	const n = 50
	var (
		start              = make(chan struct{})
		answered           = make(chan struct{}, n)
		wg                 sync.WaitGroup
		leases, inProgress atomic.Int64
		firstErr           atomic.Value
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			lease, rec, err := st.Acquire(ctx, scope, key, []byte("fp"))
			switch {
			case err == nil && lease != nil && rec == nil:
				leases.Add(1)
				// Hold the key until the others have their answers.
				for range n - 1 {
					select {
					case <-answered:
					case <-ctx.Done():
						firstErr.CompareAndSwap(nil, fmt.Errorf("holder: %w", ctx.Err()))
						return
					}
				}
				if err := lease.Complete(ctx, []byte("done")); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("Complete: %w", err))
				}
				return
			case errors.Is(err, idempotency.ErrInProgress):
				inProgress.Add(1)
			default:
				firstErr.CompareAndSwap(nil, fmt.Errorf("Acquire of a held key = (%v, %+v, %v), want ErrInProgress", lease, rec, err))
			}
			answered <- struct{}{}
		}()
	}
	close(start)
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if leases.Load() != 1 || inProgress.Load() != n-1 {
		t.Fatalf("%d concurrent Acquires: %d leases, %d in progress; want 1 and %d", n, leases.Load(), inProgress.Load(), n-1)
	}
	if rec := mustBeDone(ctx, t, st, scope, key); string(rec.Response) != "done" || string(rec.Fingerprint) != "fp" {
		t.Fatalf("record = {%q, %q}, want {fp, done}", rec.Fingerprint, rec.Response)
	}
}

// A lease left hanging ends after the lease time: another worker takes the
// key over, and the first holder can no longer complete or release it.
func (s *suite) leaseExpiry(t *testing.T) {
	if !s.f.LeaseExpiry {
		t.Skip("store does not promise Features.LeaseExpiry")
	}
	ctx := s.ctx(t)
	const lease = 300 * time.Millisecond
	st := s.store(t, lease)
	scope, key := unique("scope"), unique("key")
	stale := mustAcquire(ctx, t, st, scope, key, []byte("first"))
	var taker idempotency.Lease
	deadline := time.Now().Add(s.f.Timeout)
	for taker == nil {
		l, rec, err := st.Acquire(ctx, scope, key, []byte("second"))
		switch {
		case err == nil && l != nil:
			taker = l
		case errors.Is(err, idempotency.ErrInProgress):
			if time.Now().After(deadline) {
				t.Fatalf("key still in progress %v after a %v lease", s.f.Timeout, lease)
			}
			time.Sleep(lease / 5)
		default:
			t.Fatalf("Acquire of an expiring key = (%v, %+v, %v), want a lease or ErrInProgress", l, rec, err)
		}
	}
	if err := stale.Complete(ctx, []byte("stale")); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("Complete of an expired lease = %v, want ErrLeaseLost", err)
	}
	if err := stale.Release(ctx); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("Release of an expired lease = %v, want ErrLeaseLost", err)
	}
	mustBeInProgress(ctx, t, st, scope, key) // the taker still holds it
	if err := taker.Complete(ctx, []byte("taken over")); err != nil {
		t.Fatalf("Complete by the taker: %v", err)
	}
	if rec := mustBeDone(ctx, t, st, scope, key); string(rec.Response) != "taken over" || string(rec.Fingerprint) != "second" {
		t.Fatalf("record = {%q, %q}, want the taker's {second, taken over}", rec.Fingerprint, rec.Response)
	}
}
