package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// listener receives the notifications of a channel on a connection of its
// own and records when each arrived.
type listener struct {
	mu    sync.Mutex
	times []time.Time
}

func listen(t *testing.T, h *harness, channel string) *listener {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgx.Connect(ctx, h.url)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		cancel()
		t.Fatal(err)
	}
	l := &listener{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				return
			}
			l.mu.Lock()
			l.times = append(l.times, time.Now())
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = conn.Close(context.Background())
	})
	return l
}

func (l *listener) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.times)
}

func (l *listener) last() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.times) == 0 {
		return time.Time{}
	}
	return l.times[len(l.times)-1]
}

// waitFor polls cond every 5ms until it holds or a minute passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// By default Enqueue's notification is sent outside the caller's
// transaction: it arrives while the transaction is still open (so the
// transaction's commit is not one of the notifying commits PostgreSQL
// serializes), and a rolled-back transaction's rows stay invisible.
func TestNotifyOutsideTransaction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	l := listen(t, h, h.store.Channel())
	ctx := context.Background()
	tx, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := h.store.Enqueue(ctx, tx, broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a notification while the transaction is open", func() bool { return l.count() > 0 })
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := h.store.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 {
		t.Errorf("pending rows after rollback = %d, want 0", st.Pending)
	}
}

// With NotifyInTransaction the notification is part of the transaction: none
// arrives before the commit, one arrives after it, and a rolled-back
// transaction sends none.
func TestNotifyInTransaction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{NotifyInTransaction: true})
	l := listen(t, h, h.store.Channel())
	ctx := context.Background()
	// A marker notification on the same channel proves the listener is up
	// and orders what follows: notifications are delivered in order.
	mark := func() int {
		n := l.count()
		if _, err := h.pool.Exec(ctx, "SELECT pg_notify($1, 'mark')", h.store.Channel()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the marker notification", func() bool { return l.count() > n })
		return l.count()
	}
	base := mark()

	rolled, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.store.Enqueue(ctx, rolled, broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	if err := rolled.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Only the next marker arrives: the rolled-back transaction sent nothing.
	if got := mark(); got != base+1 {
		t.Fatalf("notifications after a rolled-back Enqueue and a marker: %d, want %d", got-base, 1)
	}

	tx, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := h.store.Enqueue(ctx, tx, broker.NewMessage("t", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	// The open transaction's notification is not delivered before a marker
	// sent after it.
	if got := mark(); got != base+2 {
		t.Fatalf("a notification arrived before the enqueueing transaction committed")
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the commit's notification", func() bool { return l.count() == base+3 })
}

// Notifications sent outside the transaction are coalesced: at most one per
// NotifyInterval plus one at the end of the last interval, and the last
// Enqueue of a burst is always followed by one.
func TestNotifyCoalesced(t *testing.T) {
	t.Parallel()
	const interval = 200 * time.Millisecond
	h := newHarness(t, postgres.Config{NotifyInterval: interval})
	l := listen(t, h, h.store.Channel())
	ctx := context.Background()
	// Make sure the listener is up before the burst.
	if _, err := h.pool.Exec(ctx, "SELECT pg_notify($1, 'mark')", h.store.Channel()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the marker notification", func() bool { return l.count() == 1 })

	const n = 100
	start := time.Now()
	var lastCall time.Time
	for i := range n {
		if i == n-1 {
			lastCall = time.Now()
		}
		if err := h.store.Enqueue(ctx, h.pool, broker.NewMessage("t", []byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	waitFor(t, "a notification after the last Enqueue", func() bool { return l.last().After(lastCall) })
	// Let the sender finish its last interval, then count.
	time.Sleep(2 * interval)
	got := l.count() - 1
	most := int(elapsed/interval) + 2
	if got < 1 || got > most {
		t.Errorf("%d Enqueue calls in %v sent %d notifications, want 1 to %d", n, elapsed, got, most)
	}
	t.Logf("%d Enqueue calls in %v sent %d notifications", n, elapsed, got)
}

// claimCounter is a store that counts the rows each of its claims returned.
type claimCounter struct {
	*postgres.Store
	mu     sync.Mutex
	claims []int
}

func (c *claimCounter) Claim(ctx context.Context, req outbox.ClaimRequest) (outbox.Claim, error) {
	cl, err := c.Store.Claim(ctx, req)
	if err == nil {
		c.mu.Lock()
		c.claims = append(c.claims, len(cl.Records()))
		c.mu.Unlock()
	}
	return cl, err
}

func (c *claimCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.claims)
}

// A relay woken before the rows it was woken for are visible (the default
// notification can precede the commit) finds them by adaptive polling: with
// notifications off and PollInterval an hour, nothing else could.
func TestRelayAdaptivePolling(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	store := &claimCounter{Store: h.open(t)}
	var (
		mu        sync.Mutex
		published []string
	)
	pub := publisherFunc(func(ctx context.Context, msgs ...broker.Message) error {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			published = append(published, m.ID)
		}
		return nil
	})
	r, err := outbox.NewRelay(store, pub, outbox.Config{PollInterval: time.Hour, DisableNotify: true,
		StatsInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Error(err)
		}
	}()
	waitFor(t, "the relay's first claim", func() bool { return store.count() > 0 })

	tx, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	m := broker.NewMessage("t", []byte("x"))
	if err := h.store.Enqueue(ctx, tx, m); err != nil {
		t.Fatal(err)
	}
	n := store.count()
	r.Wake()
	waitFor(t, "a claim after the wake-up", func() bool { return store.count() > n })
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the row published by adaptive polling", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(published) == 1 && published[0] == m.ID
	})
}

func TestNotifyIntervalValidation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	if _, err := postgres.New(h.pool, postgres.Config{NotifyInterval: -time.Millisecond}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("New with a negative NotifyInterval: err = %v, want ErrInvalidConfig", err)
	}
}

// By default the relay deletes the rows the broker accepted; KeepPublished
// marks them published instead, and they stay until housekeeping.
func TestPublishedRows(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprint("keep=", keep), func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, postgres.Config{})
			ctx := context.Background()
			const n = 30
			msgs := make([]broker.Message, n)
			for i := range msgs {
				msgs[i] = broker.NewMessage("t", []byte("x"))
				msgs[i].Key = fmt.Sprint("k", i%3)
			}
			if err := h.store.Enqueue(ctx, h.pool, msgs...); err != nil {
				t.Fatal(err)
			}
			r, err := outbox.NewRelay(h.store, outboxtest.MemoryBroker(t).Publisher,
				outbox.Config{KeepPublished: keep, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			for {
				got, err := r.RunOnce(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got == 0 {
					break
				}
			}
			var total, published int
			if err := h.pool.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE status = 'published') FROM "+h.store.Table()).
				Scan(&total, &published); err != nil {
				t.Fatal(err)
			}
			want := 0
			if keep {
				want = n
			}
			if total != want || published != want {
				t.Errorf("after the drain: %d rows, %d published; want %d and %d", total, published, want, want)
			}
		})
	}
}
