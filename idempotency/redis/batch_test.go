package redis_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/idempotency"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
)

func TestBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStore(t, idemredis.Config{})

	// Prepare: "done" is completed, "held" is held by someone else.
	done, _, err := s.Acquire(ctx, "batch", "done", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := done.Complete(ctx, nil); err != nil {
		t.Fatal(err)
	}
	held, _, err := s.Acquire(ctx, "batch", "held", nil)
	if err != nil {
		t.Fatal(err)
	}

	keys := []string{"free-1", "done", "held", "", "free-2", "free-1", strings.Repeat("k", idempotency.MaxKeyBytes+1)}
	claims, err := s.AcquireBatch(ctx, "batch", keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != len(keys) {
		t.Fatalf("%d claims for %d keys", len(claims), len(keys))
	}
	check := func(i int, lease, rec bool, want error) {
		t.Helper()
		c := claims[i]
		if c.Key != keys[i] || (c.Lease != nil) != lease || (c.Done != nil) != rec ||
			(want == nil) != (c.Err == nil) || (want != nil && !errors.Is(c.Err, want)) {
			t.Fatalf("claim %d (%q) = {lease %v, done %+v, err %v}, want lease=%v done=%v err=%v", i, keys[i], c.Lease, c.Done, c.Err, lease, rec, want)
		}
	}
	check(0, true, false, nil)
	check(1, false, true, nil)
	check(2, false, false, idempotency.ErrInProgress)
	check(3, false, false, idempotency.ErrInvalidKey)
	check(4, true, false, nil)
	check(5, false, false, idempotency.ErrInProgress) // repeated within the batch
	check(6, false, false, idempotency.ErrInvalidKey)

	if err := s.CompleteBatch(ctx, claims[0].Lease, nil); err != nil {
		t.Fatalf("CompleteBatch: %v", err)
	}
	if err := s.ReleaseBatch(ctx, claims[4].Lease); err != nil {
		t.Fatalf("ReleaseBatch: %v", err)
	}
	again, err := s.AcquireBatch(ctx, "batch", []string{"free-1", "free-2"})
	if err != nil {
		t.Fatal(err)
	}
	if again[0].Done == nil || again[1].Lease == nil {
		t.Fatalf("after complete/release: %+v, %+v; want done, then a new lease", again[0], again[1])
	}
	// Ending leases twice, or a lease someone else holds, reports each key.
	err = s.CompleteBatch(ctx, claims[0].Lease, claims[4].Lease, again[1].Lease)
	if !errors.Is(err, idempotency.ErrLeaseLost) || !strings.Contains(err.Error(), `"free-1"`) || !strings.Contains(err.Error(), `"free-2"`) {
		t.Fatalf("CompleteBatch of ended leases = %v, want ErrLeaseLost naming free-1 and free-2", err)
	}
	if rec, _ := s.AcquireBatch(ctx, "batch", []string{"free-2"}); rec[0].Done == nil {
		t.Fatalf("free-2 not done: the valid lease in a batch with lost ones must still complete: %+v", rec[0])
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}

	other := newStore(t, idemredis.Config{})
	ol, _ := other.AcquireBatch(ctx, "batch", []string{"x"})
	if err := s.CompleteBatch(ctx, ol[0].Lease); err == nil {
		t.Fatal("CompleteBatch accepted a lease of another Store")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.AcquireBatch(cctx, "batch", []string{"y"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("AcquireBatch with a cancelled context = %v", err)
	}
}

// Leases taken in a batch expire like single ones: another worker takes the
// keys over and the batch's CompleteBatch reports them lost.
func TestBatchLeaseExpiry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const lease = 200 * time.Millisecond
	s := newStore(t, idemredis.Config{Lease: lease})
	claims, err := s.AcquireBatch(ctx, "batch", []string{"a", "b"})
	if err != nil || claims[0].Lease == nil || claims[1].Lease == nil {
		t.Fatalf("AcquireBatch: %+v %v", claims, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		again, err := s.AcquireBatch(ctx, "batch", []string{"a"})
		if err != nil {
			t.Fatal(err)
		}
		if again[0].Lease != nil {
			break
		}
		if !errors.Is(again[0].Err, idempotency.ErrInProgress) || time.Now().After(deadline) {
			t.Fatalf("waiting for expiry: %+v", again[0])
		}
		time.Sleep(lease / 4)
	}
	err = s.CompleteBatch(ctx, claims[0].Lease, claims[1].Lease)
	if !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("CompleteBatch of expired leases = %v, want ErrLeaseLost", err)
	}
}
