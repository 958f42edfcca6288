package memory_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/idempotencytest"
	"github.com/steadfast-go/steadfast/idempotency/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func TestConformance(t *testing.T) {
	idempotencytest.Run(t, idempotencytest.Features{LeaseExpiry: true},
		func(t *testing.T, o idempotencytest.Options) idempotency.Store {
			s, err := memory.New(memory.Config{Lease: o.Lease})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
}

// A fake clock drives lease expiry and retention.
type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func TestRetentionAndSweep(t *testing.T) {
	ctx := context.Background()
	c := &clock{now: time.Unix(1_700_000_000, 0)}
	s, err := memory.New(memory.Config{Lease: time.Minute, Retention: time.Hour, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := s.Acquire(ctx, "scope", "done", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Complete(ctx, []byte("r")); err != nil {
		t.Fatal(err)
	}
	c.now = c.now.Add(59 * time.Minute)
	if _, rec, err := s.Acquire(ctx, "scope", "done", nil); err != nil || rec == nil {
		t.Fatalf("within retention: (%+v, %v), want the record", rec, err)
	}
	c.now = c.now.Add(2 * time.Minute)
	l, rec, err := s.Acquire(ctx, "scope", "done", nil)
	if err != nil || l == nil || rec != nil {
		t.Fatalf("after retention: (%v, %+v, %v), want a new lease", l, rec, err)
	}

	// Expired entries are swept as Acquire runs.
	for i := range 5000 {
		if _, _, err := s.Acquire(ctx, "sweep", string(rune('a'+i%26))+time.Duration(i).String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	c.now = c.now.Add(2 * time.Minute) // every lease has expired
	for i := range 5000 {
		if _, _, err := s.Acquire(ctx, "other", time.Duration(i).String(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.Len(); n > 6000 {
		t.Fatalf("store holds %d entries after the leases expired, want expired ones swept", n)
	}
}

func TestNewRejectsNegativeDurations(t *testing.T) {
	if _, err := memory.New(memory.Config{Lease: -time.Second}); !errors.Is(err, memory.ErrInvalidConfig) {
		t.Fatalf("negative Lease: %v, want ErrInvalidConfig", err)
	}
	if _, err := memory.New(memory.Config{Retention: -time.Second}); !errors.Is(err, memory.ErrInvalidConfig) {
		t.Fatalf("negative Retention: %v, want ErrInvalidConfig", err)
	}
	s, _ := memory.New(memory.Config{})
	if _, _, err := s.Acquire(context.Background(), "", "k", nil); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Fatalf("empty scope: %v, want ErrInvalidKey", err)
	}
}

// The same message delivered by 50 goroutines at once, through the consumer
// middleware on the memory store, increments a Postgres counter row once.
func TestConcurrentDeliveriesOneEffect(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testenv.Postgres(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	s, _ := memory.New(memory.Config{})
	mw, err := idempotency.Consumer(s, idempotency.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c := idempotencytest.NewContention(50)
	h := broker.Chain(func(ctx context.Context, d broker.Delivery) error {
		c.Hold()
		_, err := pool.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`)
		return err
	}, mw)
	c.Deliver(ctx, t, broker.Delivery{Message: broker.NewMessage("orders", nil), Group: "billing", Partition: -1, Offset: -1}, h)
	var n int
	if err := pool.QueryRow(ctx, `SELECT n FROM counter`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("counter = %d (%v) after 50 concurrent deliveries, want 1", n, err)
	}
}
