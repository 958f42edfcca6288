package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/idempotencytest"
	"github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func newStore(t testing.TB, pool *pgxpool.Pool, cfg postgres.Config) *postgres.Store {
	t.Helper()
	s, err := postgres.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// testDB opens a pool on a fresh schema whose connections carry a unique
// application_name, so a test can find (and kill) its own backends.
func testDB(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	_, url, _ := testenv.PostgresDB(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	app := testenv.Name(t, "app")
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, app
}

func TestConformance(t *testing.T) {
	t.Parallel()
	idempotencytest.Run(t, idempotencytest.Features{},
		func(t *testing.T, _ idempotencytest.Options) idempotency.Store {
			return newStore(t, testenv.Postgres(t), postgres.Config{})
		})
}

// counter creates the business table of the exactly-once tests: one row
// the handler increments in its transaction.
func counter(t testing.TB, pool *pgxpool.Pool) (inc func(context.Context, pgx.Tx) error, read func() int) {
	t.Helper()
	if _, err := pool.Exec(context.Background(),
		`CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	inc = func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`)
		return err
	}
	read = func() int {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	return inc, read
}

func handler(t testing.TB, s *postgres.Store, cfg idempotency.ConsumerConfig, h postgres.TxHandler) broker.Handler {
	t.Helper()
	bh, err := s.Handler(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	return bh
}

func delivery(group string) broker.Delivery {
	return broker.Delivery{Message: broker.NewMessage("orders", []byte("x")), Attempt: 1, Group: group, Partition: -1, Offset: -1}
}

// The same message delivered by 50 goroutines at once makes one counter
// increment, with the claim in the increment's transaction (Handler) and
// with the generic middleware on the Postgres store.
func TestConcurrentDeliveriesOneEffect(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"Handler", "Middleware"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			pool, _ := testDB(t)
			s := newStore(t, pool, postgres.Config{})
			inc, read := counter(t, pool)
			c := idempotencytest.NewContention(50)
			var h broker.Handler
			if mode == "Handler" {
				h = handler(t, s, idempotency.ConsumerConfig{}, func(ctx context.Context, tx pgx.Tx, _ broker.Delivery) error {
					c.Hold()
					return inc(ctx, tx)
				})
			} else {
				mw, err := idempotency.Consumer(s, idempotency.ConsumerConfig{})
				if err != nil {
					t.Fatal(err)
				}
				h = mw(func(ctx context.Context, _ broker.Delivery) error {
					c.Hold()
					return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return inc(ctx, tx) })
				})
			}
			c.Deliver(ctx, t, delivery("billing"), h)
			if n := read(); n != 1 {
				t.Fatalf("counter = %d after 50 concurrent deliveries, want 1", n)
			}
			t.Logf("%d in-progress answers", c.InProgress())
		})
	}
}

// consume runs h on a memory broker until every message is acknowledged.
func consume(t *testing.T, b *memory.Broker, topic, group string, h broker.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, h) }()
	deadline := time.Now().Add(time.Minute)
	for b.Pending(topic, group) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := b.Pending(topic, group); n > 0 {
		t.Fatalf("%d messages unacknowledged after a minute", n)
	}
}

func newBroker(t *testing.T) *memory.Broker {
	b := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(2 * time.Millisecond)})
	t.Cleanup(func() { b.Close() })
	return b
}

// The effect and the claim committed, then the process died before the
// broker ack: the redelivery is skipped and the counter stays at 1.
func TestHandlerCrashAfterCommitBeforeAck(t *testing.T) {
	t.Parallel()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{})
	inc, read := counter(t, pool)
	var calls atomic.Int64
	var dups atomic.Int64
	cfg := idempotency.ConsumerConfig{OnDuplicate: func(context.Context, broker.Delivery) { dups.Add(1) }}
	inner := handler(t, s, cfg, func(ctx context.Context, tx pgx.Tx, _ broker.Delivery) error {
		calls.Add(1)
		return inc(ctx, tx)
	})
	h := func(ctx context.Context, d broker.Delivery) error {
		if err := inner(ctx, d); err != nil {
			return err
		}
		if d.Attempt == 1 {
			return errors.New("ack lost: the process died after the commit")
		}
		return nil
	}
	b := newBroker(t)
	if err := b.Publish(context.Background(), broker.NewMessage("orders", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	consume(t, b, "orders", "billing", h)
	if n, c := read(), calls.Load(); n != 1 || c != 1 || dups.Load() != 1 {
		t.Fatalf("counter = %d, handler calls = %d, duplicates reported %d after a lost ack; want 1, 1 and 1", n, c, dups.Load())
	}
}

// A handler error rolls back the effect and the claim together: the
// redelivery is processed, and the counter ends at 1.
func TestHandlerErrorRollsBack(t *testing.T) {
	t.Parallel()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{})
	inc, read := counter(t, pool)
	var calls atomic.Int64
	h := handler(t, s, idempotency.ConsumerConfig{}, func(ctx context.Context, tx pgx.Tx, _ broker.Delivery) error {
		if err := inc(ctx, tx); err != nil {
			return err
		}
		if calls.Add(1) == 1 {
			return errors.New("fails after writing its effect")
		}
		return nil
	})
	b := newBroker(t)
	if err := b.Publish(context.Background(), broker.NewMessage("orders", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	consume(t, b, "orders", "billing", h)
	if n, c := read(), calls.Load(); n != 1 || c != 2 {
		t.Fatalf("counter = %d, handler calls = %d; want 1 (the failed attempt rolled back) and 2", n, c)
	}
}

// The handler's connection dies mid-transaction (the process crashed before
// the commit): the database rolls the claim back, the redelivery is
// processed once. A panic rolls back too.
func TestHandlerCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{})
	inc, read := counter(t, pool)
	var calls atomic.Int64
	h := handler(t, s, idempotency.ConsumerConfig{}, func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
		if err := inc(ctx, tx); err != nil {
			return err
		}
		switch calls.Add(1) {
		case 1:
			_, err := tx.Exec(ctx, `SELECT pg_terminate_backend(pg_backend_pid())`)
			return fmt.Errorf("connection killed: %w", err)
		case 2:
			panic("handler bug after its effect")
		}
		return nil
	})
	ctx := context.Background()
	d := delivery("billing")
	if err := h(ctx, d); err == nil {
		t.Fatal("delivery whose connection died returned nil")
	}
	func() {
		defer func() { _ = recover() }()
		_ = h(ctx, d)
		t.Error("the handler's panic did not propagate")
	}()
	if err := h(ctx, d); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if err := h(ctx, d); err != nil {
		t.Fatalf("duplicate: %v", err)
	}
	if n, c := read(), calls.Load(); n != 1 || c != 3 {
		t.Fatalf("counter = %d, handler calls = %d; want 1 and 3", n, c)
	}
}

// waitForLockWaiter waits until a backend of app waits on a lock.
func waitForLockWaiter(t *testing.T, pool *pgxpool.Pool, app string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'`, app).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no claim is waiting on the lock after a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A delivery whose key an uncommitted transaction holds: by default it
// answers ErrInProgress at once, leaving the claimer's transaction usable;
// with a bounded wait it answers ErrInProgress after the wait; with an
// unbounded one it waits, then sees the duplicate if the holder commits, or
// processes the message if the holder rolls back.
func TestHandlerInProgress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, app := testDB(t)
	s := newStore(t, pool, postgres.Config{})
	bounded := newStore(t, pool, postgres.Config{Wait: 100 * time.Millisecond})
	waiting := newStore(t, pool, postgres.Config{Wait: -1})
	inc, read := counter(t, pool)
	var calls atomic.Int64
	body := func(ctx context.Context, tx pgx.Tx, _ broker.Delivery) error {
		calls.Add(1)
		return inc(ctx, tx)
	}
	noWait := handler(t, s, idempotency.ConsumerConfig{}, body)
	boundedWait := handler(t, bounded, idempotency.ConsumerConfig{}, body)
	unbounded := handler(t, waiting, idempotency.ConsumerConfig{}, body)

	for _, commit := range []bool{true, false} {
		d := delivery("billing")
		holder, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := s.Claim(ctx, holder, "billing", d.ID); err != nil || !ok {
			t.Fatalf("holder Claim = %v, %v", ok, err)
		}
		if err := noWait(ctx, d); !errors.Is(err, idempotency.ErrInProgress) {
			t.Fatalf("delivery while another transaction holds the key = %v, want ErrInProgress", err)
		}
		if err := boundedWait(ctx, d); !errors.Is(err, idempotency.ErrInProgress) {
			t.Fatalf("delivery with a bounded wait while another transaction holds the key = %v, want ErrInProgress", err)
		}
		// Not waiting leaves the claimer's own transaction usable.
		other, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Claim(ctx, other, "billing", d.ID); !errors.Is(err, idempotency.ErrInProgress) {
			t.Fatalf("Claim of a held key = %v, want ErrInProgress", err)
		}
		if _, err := other.Exec(ctx, `SELECT 1`); err != nil {
			t.Fatalf("transaction after an in-progress Claim: %v", err)
		}
		if err := other.Rollback(ctx); err != nil {
			t.Fatal(err)
		}

		done := make(chan error, 1)
		go func() { done <- unbounded(ctx, d) }()
		waitForLockWaiter(t, pool, app)
		before := calls.Load()
		if commit {
			err = holder.Commit(ctx)
		} else {
			err = holder.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("waiting delivery after the holder ended (commit=%v): %v", commit, err)
		}
		ran := calls.Load() - before
		if commit && ran != 0 {
			t.Fatal("holder committed, yet the waiting delivery ran the handler")
		}
		if !commit && ran != 1 {
			t.Fatal("holder rolled back, yet the waiting delivery did not run the handler")
		}
	}
	if n := read(); n != 1 {
		t.Fatalf("counter = %d, want 1 (from the delivery after the rollback)", n)
	}
}

// Claim in the caller's transaction: a rollback frees the key, a commit
// marks it; the transaction's lock_timeout is left as it was.
func TestClaimInCallerTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{Wait: time.Second}) // sets and restores lock_timeout

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '7s'`); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Claim(ctx, tx, "c", "k"); err != nil || !ok {
		t.Fatalf("Claim = %v, %v; want true", ok, err)
	}
	var lt string
	if err := tx.QueryRow(ctx, `SHOW lock_timeout`).Scan(&lt); err != nil || lt != "7s" {
		t.Fatalf("lock_timeout after Claim = %q, %v; want 7s", lt, err)
	}
	if ok, err := s.Claim(ctx, tx, "c", "k"); err != nil || ok {
		t.Fatalf("second Claim in the same transaction = %v, %v; want false", ok, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ok, err := s.Claim(ctx, tx, "c", "k")
		if err == nil && !ok {
			err = errors.New("key not free after the rollback")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		ok, err := s.Claim(ctx, tx, "c", "k")
		if err == nil && ok {
			err = errors.New("key free after the commit")
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// A pool or a connection outside a transaction claims for good at once.
	if ok, err := s.Claim(ctx, pool, "c", "pool"); err != nil || !ok {
		t.Fatalf("Claim on the pool = %v, %v", ok, err)
	}
	if ok, err := s.Claim(ctx, pool, "c", "pool"); err != nil || ok {
		t.Fatalf("second Claim on the pool = %v, %v; want false", ok, err)
	}
	if _, err := s.Claim(ctx, pool, "c", ""); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Fatalf("empty key: %v", err)
	}
	// The session's own lock_timeout survives a claim outside a transaction.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET lock_timeout = '3s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, conn.Conn(), "c", "conn"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SHOW lock_timeout`).Scan(&lt); err != nil || lt != "3s" {
		t.Fatalf("session lock_timeout after Claim = %q, %v; want 3s", lt, err)
	}
	if _, err := conn.Exec(ctx, `RESET lock_timeout`); err != nil {
		t.Fatal(err)
	}
}

// Under REPEATABLE READ, a key committed after the transaction's snapshot is
// a serialization failure, reported as ErrInProgress: retry later, and the
// retry sees the duplicate.
func TestRepeatableRead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{TxOptions: pgx.TxOptions{IsoLevel: pgx.RepeatableRead}})
	late, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	if _, err := late.Exec(ctx, `SELECT 1`); err != nil { // takes the snapshot
		t.Fatal(err)
	}
	if ok, err := s.Claim(ctx, pool, "rr", "k"); err != nil || !ok {
		t.Fatalf("Claim = %v, %v", ok, err)
	}
	if _, err := s.Claim(ctx, late, "rr", "k"); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Claim of a key committed after the snapshot = %v, want ErrInProgress", err)
	}
	if _, rec, err := s.Acquire(ctx, "rr", "k", nil); err != nil || rec == nil {
		t.Fatalf("retry: (%+v, %v), want the duplicate", rec, err)
	}
}

// The lease of Acquire is a transaction: when its connection dies (the
// process crashed mid-work) the key is free again.
func TestAcquireLeaseConnectionDies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, app := testDB(t)
	s := newStore(t, pool, postgres.Config{})
	lease, _, err := s.Acquire(ctx, "scope", "k", []byte("fp"))
	if err != nil || lease == nil {
		t.Fatalf("Acquire: %v %v", lease, err)
	}
	var killed int
	if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, app).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d backends (%v), want the lease's one", killed, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		l, rec, err := s.Acquire(ctx, "scope", "k", nil)
		if err == nil && l != nil {
			if err := l.Complete(ctx, nil); err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, idempotency.ErrInProgress) || time.Now().After(deadline) {
			t.Fatalf("Acquire after the holder's connection died = (%v, %+v, %v), want a lease", l, rec, err)
		}
	}
	if err := lease.Complete(ctx, []byte("late")); !errors.Is(err, idempotency.ErrLeaseLost) {
		t.Fatalf("Complete on a dead connection = %v, want ErrLeaseLost", err)
	}
	// Without a response, Complete goes straight to COMMIT; Release of a
	// lease whose connection died is lost too.
	for _, end := range []func(idempotency.Lease) error{
		func(l idempotency.Lease) error { return l.Complete(ctx, nil) },
		func(l idempotency.Lease) error { return l.Release(ctx) },
	} {
		l, _, err := s.Acquire(ctx, "scope", "k2", nil)
		if err != nil || l == nil {
			t.Fatalf("Acquire k2: %v %v", l, err)
		}
		if err := pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND state LIKE 'idle in transaction%'`, app).Scan(&killed); err != nil || killed != 1 {
			t.Fatalf("terminated %d backends (%v), want the lease's one", killed, err)
		}
		if err := end(l); !errors.Is(err, idempotency.ErrLeaseLost) {
			t.Fatalf("ending a lease whose connection died = %v, want ErrLeaseLost", err)
		}
	}
}

func TestMigrateAndSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _, schema := testenv.PostgresDB(t)
	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- postgres.Migrate(ctx, pool, "")
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	// A custom, schema-qualified table works end to end.
	custom := schema + ".dedup_custom"
	s, err := postgres.New(pool, postgres.Config{Table: custom})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if ok, err := s.Claim(ctx, pool, "c", "k"); err != nil || !ok {
		t.Fatalf("Claim on %s: %v %v", custom, ok, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{schema, "dedup_custom"}.Sanitize()).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in %s = %d, %v", custom, n, err)
	}
	sql, err := postgres.Schema("")
	if err != nil || !strings.Contains(sql, `"steadfast_idempotency"`) || !strings.Contains(sql, `"steadfast_idempotency_created_at_idx"`) {
		t.Fatalf("Schema(\"\") = %q, %v", sql, err)
	}
	sql, err = postgres.Schema("app.dedup")
	if err != nil || !strings.Contains(sql, `"app"."dedup"`) || !strings.Contains(sql, `INDEX IF NOT EXISTS "dedup_created_at_idx"`) {
		t.Fatalf("Schema(app.dedup) = %q, %v", sql, err)
	}
	for _, bad := range []string{"Upper", "a.b.c", "x; DROP TABLE y", `"q"`, "1abc", "a..b", strings.Repeat("a", 64), strings.Repeat("a", 49), "."} {
		if _, err := postgres.Schema(bad); !errors.Is(err, postgres.ErrInvalidTable) {
			t.Fatalf("Schema(%q) = %v, want ErrInvalidTable", bad, err)
		}
		_, err := postgres.New(pool, postgres.Config{Table: bad})
		if !errors.Is(err, postgres.ErrInvalidTable) || !errors.Is(err, postgres.ErrInvalidConfig) {
			t.Fatalf("New with table %q = %v, want ErrInvalidTable and ErrInvalidConfig", bad, err)
		}
		if !strings.HasPrefix(err.Error(), "idempotency/postgres: ") {
			t.Fatalf("New with table %q: error %q does not name the package", bad, err)
		}
		if err := postgres.Migrate(ctx, pool, bad); !errors.Is(err, postgres.ErrInvalidTable) {
			t.Fatalf("Migrate(%q) = %v, want ErrInvalidTable", bad, err)
		}
	}
	if _, err := postgres.New(nil, postgres.Config{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Fatalf("New(nil pool) = %v, want ErrInvalidConfig", err)
	}
	if _, err := postgres.New(pool, postgres.Config{Retention: -1}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Fatalf("negative Retention: %v, want ErrInvalidConfig", err)
	}
	if _, err := postgres.New(pool, postgres.Config{Table: strings.Repeat("a", 48)}); err != nil {
		t.Fatalf("a 48-byte table name: %v", err)
	}
	if _, err := s.Handler(idempotency.ConsumerConfig{}, nil); !errors.Is(err, broker.ErrNilHandler) {
		t.Fatalf("Handler(nil) = %v, want broker.ErrNilHandler", err)
	}
}

func TestCleanup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := testDB(t)
	s := newStore(t, pool, postgres.Config{Retention: time.Hour})
	for i := range 12000 {
		if i%1000 == 0 {
			b := &pgx.Batch{}
			for j := i; j < i+1000; j++ {
				b.Queue(`INSERT INTO steadfast_idempotency (scope, key, created_at) VALUES ('c', $1, now() - interval '2 hours')`, fmt.Sprint(j))
			}
			if err := pool.SendBatch(ctx, b).Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ok, err := s.Claim(ctx, pool, "c", "fresh"); err != nil || !ok {
		t.Fatal(ok, err)
	}
	n, err := s.Cleanup(ctx, time.Now().Add(-time.Hour))
	if err != nil || n != 12000 {
		t.Fatalf("Cleanup = %d, %v; want 12000 old keys deleted", n, err)
	}
	if ok, err := s.Claim(ctx, pool, "c", "7"); err != nil || !ok {
		t.Fatalf("a cleaned-up key is not free: %v %v", ok, err)
	}
	if ok, err := s.Claim(ctx, pool, "c", "fresh"); err != nil || ok {
		t.Fatalf("a recent key was cleaned up: %v %v", ok, err)
	}

	// RunCleanup does the same on a timer and returns nil when stopped.
	if _, err := pool.Exec(ctx, `UPDATE steadfast_idempotency SET created_at = now() - interval '2 hours' WHERE key = '7'`); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.RunCleanup(rctx, 10*time.Millisecond) }()
	deadline := time.Now().Add(time.Minute)
	for {
		var left int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM steadfast_idempotency`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys left after a minute of RunCleanup, want 1", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("RunCleanup = %v, want nil after cancel", err)
	}
	if err := s.RunCleanup(ctx, 0); err == nil {
		t.Fatal("RunCleanup with a zero interval accepted")
	}
}

// collidingKeys returns two keys of scope whose advisory lock keys collide:
// 32-bit FNV-1a over scope, a NUL and the key, as the store computes them.
func collidingKeys(t *testing.T, scope string) (string, string) {
	t.Helper()
	hash := func(key string) uint32 {
		h := uint32(2166136261)
		for _, s := range []string{scope, "\x00", key} {
			for i := 0; i < len(s); i++ {
				h = (h ^ uint32(s[i])) * 16777619
			}
		}
		return h
	}
	seen := make(map[uint32]string)
	for i := range 1 << 22 {
		k := "order-" + strconv.Itoa(i)
		h := hash(k)
		if prev, ok := seen[h]; ok {
			return prev, k
		}
		seen[h] = k
	}
	t.Fatal("no colliding keys found")
	return "", ""
}

// TestLockHashCollision: two different keys whose lock hashes collide
// share an advisory lock, and nothing more. While one is being claimed, a
// claim of the other reports ErrInProgress at once (Wait zero) or waits
// for the holder to end (Wait positive); it never reports a duplicate. Once
// the holder ended, the other key is claimed as new.
func TestLockHashCollision(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, _ := testDB(t)
	a, b := collidingKeys(t, "orders")
	t.Logf("colliding keys %q and %q", a, b)

	noWait := newStore(t, pool, postgres.Config{})
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := noWait.Claim(ctx, tx, "orders", a); err != nil || !ok {
		t.Fatalf("claim %s = %v, %v; want claimed", a, ok, err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := noWait.Claim(ctx, tx, "orders", b)
		return err
	})
	if !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("claim of %s while %s is held = %v; want ErrInProgress (if it was claimed, the keys no longer share a lock and the test's hash is stale)", b, a, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, err := noWait.Claim(ctx, pool, "orders", b); err != nil || !ok {
		t.Fatalf("claim of %s after %s committed = %v, %v; want claimed (a collision is no duplicate)", b, a, ok, err)
	}
	if ok, err := noWait.Claim(ctx, pool, "orders", a); err != nil || ok {
		t.Fatalf("claim of %s again = %v, %v; want a duplicate", a, ok, err)
	}

	// Waiting: the claim of the other key proceeds when the holder ends.
	c, d := collidingKeys(t, "payments")
	wait := newStore(t, pool, postgres.Config{Wait: 30 * time.Second})
	tx, err = pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := wait.Claim(ctx, tx, "payments", c); err != nil || !ok {
		t.Fatalf("claim %s = %v, %v; want claimed", c, ok, err)
	}
	type result struct {
		ok  bool
		err error
	}
	got := make(chan result, 1)
	go func() {
		var ok bool
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			var err error
			ok, err = wait.Claim(ctx, tx, "payments", d)
			return err
		})
		got <- result{ok, err}
	}()
	select {
	case r := <-got:
		t.Fatalf("claim of %s returned %+v while %s was held; it should wait", d, r, c)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || !r.ok {
		t.Fatalf("claim of %s after the holder rolled back = %+v; want claimed", d, r)
	}
}

// TestHTTPWait: behind the HTTP middleware, a Postgres store with a
// positive Wait makes a repeat that arrives while the first request runs
// wait for it and get its stored response, instead of 409; a repeat that
// waits longer than Wait gets 409 and leaves the first request unharmed.
func TestHTTPWait(t *testing.T) {
	t.Parallel()
	pool, _ := testDB(t)
	for _, c := range []struct {
		name       string
		wait, hold time.Duration
		wantStatus int
	}{
		{"holder ends within Wait", 10 * time.Second, 300 * time.Millisecond, http.StatusAccepted},
		{"holder outlives Wait", 200 * time.Millisecond, 2 * time.Second, http.StatusConflict},
	} {
		s := newStore(t, pool, postgres.Config{Wait: c.wait})
		mw, err := idempotency.HTTP(s, idempotency.HTTPConfig{Scope: "wait-" + strconv.Itoa(int(c.wait.Milliseconds()))})
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int64
		entered := make(chan struct{}, 1)
		srv := httptest.NewServer(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			entered <- struct{}{}
			time.Sleep(c.hold)
			w.WriteHeader(http.StatusAccepted)
			io.WriteString(w, "accepted")
		})))
		post := func() (*http.Response, string) {
			req, err := http.NewRequest("POST", srv.URL+"/pay", strings.NewReader("10"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(idempotency.HeaderIdempotencyKey, "k")
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp, string(b)
		}
		first := make(chan int, 1)
		go func() {
			resp, body := post()
			if body != "accepted" {
				t.Errorf("%s: first request body %q", c.name, body)
			}
			first <- resp.StatusCode
		}()
		<-entered
		resp, body := post()
		if resp.StatusCode != c.wantStatus {
			t.Errorf("%s: repeat while the first runs: %d %q, want %d", c.name, resp.StatusCode, body, c.wantStatus)
		}
		if c.wantStatus == http.StatusAccepted && (body != "accepted" || resp.Header.Get(idempotency.HeaderReplayed) != "true") {
			t.Errorf("%s: repeat got %q replayed=%q, want the stored response", c.name, body, resp.Header.Get(idempotency.HeaderReplayed))
		}
		if st := <-first; st != http.StatusAccepted {
			t.Errorf("%s: first request: %d, want 202", c.name, st)
		}
		if resp, _ := post(); resp.StatusCode != http.StatusAccepted || resp.Header.Get(idempotency.HeaderReplayed) != "true" {
			t.Errorf("%s: repeat after the first finished: %d replayed=%q, want 202 replayed", c.name, resp.StatusCode, resp.Header.Get(idempotency.HeaderReplayed))
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("%s: handler ran %d times, want 1", c.name, n)
		}
		srv.Close()
	}
}
