package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	for _, table := range []string{
		"outbox; DROP TABLE users", `out"box`, "a.b.c", "1outbox", "out box", ".outbox", "outbox.",
		strings.Repeat("x", 41), strings.Repeat("s", 64) + ".outbox",
	} {
		if _, err := postgres.New(pool, postgres.Config{Table: table}); !errors.Is(err, postgres.ErrInvalidConfig) {
			t.Errorf("New with table %q: err = %v, want ErrInvalidConfig", table, err)
		}
		if _, err := postgres.Schema(table); !errors.Is(err, postgres.ErrInvalidConfig) {
			t.Errorf("Schema(%q): err = %v, want ErrInvalidConfig", table, err)
		}
	}
	for _, cfg := range []postgres.Config{
		{Channel: strings.Repeat("c", 64)},
		{MaxMessageBytes: -1},
		{ClaimTimeout: -time.Second},
	} {
		if _, err := postgres.New(pool, cfg); !errors.Is(err, postgres.ErrInvalidConfig) {
			t.Errorf("New(%+v): err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := postgres.New(nil, postgres.Config{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("New(nil pool): err = %v, want ErrInvalidConfig", err)
	}
	s, err := postgres.New(pool, postgres.Config{Table: strings.Repeat("t", 40)})
	if err != nil {
		t.Fatalf("a 40-byte table name: %v", err)
	}
	if len(s.Channel()) > 63 {
		t.Errorf("default channel %q is longer than 63 bytes", s.Channel())
	}
}

// A schema-qualified, mixed-case table is quoted everywhere: migrate,
// enqueue, claim, admin.
func TestQuotedTable(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA "Billing"`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP SCHEMA "Billing" CASCADE`) })
	s, err := postgres.New(pool, postgres.Config{Table: "Billing.Outbox", Channel: testenv.Name(t, "ch")})
	if err != nil {
		t.Fatal(err)
	}
	if s.Table() != `"Billing"."Outbox"` {
		t.Errorf("Table() = %s", s.Table())
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, "Billing.Outbox"); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	if err := s.Enqueue(ctx, pool, outboxtest.SeqMessage("t", "k", 0)); err != nil {
		t.Fatal(err)
	}
	c, err := s.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	if err != nil || len(c.Records()) != 1 {
		t.Fatalf("claim: %v, %v", c, err)
	}
	if err := c.Complete(ctx, outbox.Outcome{Failed: []outbox.Failure{{ID: c.Records()[0].ID, Reason: "x", Park: true}}}); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Parked(ctx, outbox.ParkedQuery{}); err != nil || len(p) != 1 {
		t.Fatalf("parked: %v, %v", p, err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM "Billing"."Outbox"`).Scan(&n); err != nil || n != 1 {
		t.Errorf("rows in the quoted table: %d, %v", n, err)
	}
}

// Migrate is idempotent and safe to run concurrently, also inside a
// transaction of the caller's.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	pool := testenv.Postgres(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Go(func() {
			if i%2 == 0 {
				errs <- postgres.Migrate(ctx, pool, "outbox")
				return
			}
			errs <- pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return postgres.Migrate(ctx, tx, "outbox") })
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent migrate: %v", err)
		}
	}
}

// Enqueue without a transaction (a pool) commits at once; with none of
// messages it does nothing; a nil DB is an error.
func TestEnqueueOutsideTransaction(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	ctx := context.Background()
	if err := h.store.Enqueue(ctx, h.pool); err != nil {
		t.Errorf("enqueue of nothing: %v", err)
	}
	if err := h.store.Enqueue(ctx, nil, outboxtest.SeqMessage("t", "k", 0)); err == nil {
		t.Errorf("enqueue with a nil DB succeeded")
	}
	if err := h.store.Enqueue(ctx, h.pool, outboxtest.SeqMessage("t", "k", 0), outboxtest.SeqMessage("t", "k", 1)); err != nil {
		t.Fatal(err)
	}
	st, err := h.store.Stats(ctx)
	if err != nil || st.Pending != 2 {
		t.Errorf("stats after enqueueing through the pool: %+v, %v", st, err)
	}
}

// The trace context of Enqueue's ctx travels in the message headers;
// a traceparent the caller set is kept.
func TestEnqueueTraceContext(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	plain := broker.NewMessage("t", nil)
	own := broker.NewMessage("t", nil)
	own.Headers = map[string]string{broker.HeaderTraceparent: "00-11111111111111111111111111111111-2222222222222222-01"}
	if err := h.store.Enqueue(ctx, h.pool, plain, own); err != nil {
		t.Fatal(err)
	}
	c, err := h.store.Claim(context.Background(), outbox.ClaimRequest{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(context.Background())
	got := map[string]string{}
	for _, r := range c.Records() {
		got[r.Message.ID] = r.Message.Header(broker.HeaderTraceparent)
	}
	if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"; got[plain.ID] != want {
		t.Errorf("traceparent = %q, want %q", got[plain.ID], want)
	}
	if got[own.ID] != own.Headers[broker.HeaderTraceparent] {
		t.Errorf("the caller's traceparent was replaced: %q", got[own.ID])
	}
	if plain.Headers != nil {
		t.Errorf("Enqueue modified the caller's message")
	}
}

// With LockKeys, a transaction enqueueing for a key waits for an open one
// that enqueued for the same key, so the key's IDs follow commit order;
// other keys do not wait.
func TestLockKeys(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{LockKeys: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(context.Background())
	if err := h.store.Enqueue(ctx, first, outboxtest.SeqMessage("t", "k", 0), outboxtest.SeqMessage("t", "other", 0)); err != nil {
		t.Fatal(err)
	}
	// Another key does not wait.
	if err := h.store.Enqueue(ctx, h.pool, outboxtest.SeqMessage("t", "free", 0)); err != nil {
		t.Fatal(err)
	}
	secondConn, err := h.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer secondConn.Release()
	var pid int
	if err := secondConn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- pgx.BeginFunc(ctx, secondConn, func(tx pgx.Tx) error {
			return h.store.Enqueue(ctx, tx, outboxtest.SeqMessage("t", "k", 1))
		})
	}()
	// The second transaction waits on the key's advisory lock.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting bool
		err := h.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)`, pid).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the second transaction did not wait for the first: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the second transaction never waited on the key lock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("second transaction: %v", err)
	}
	c, err := h.store.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(context.Background())
	var ks []string
	for _, r := range c.Records() {
		if r.Message.Key == "k" {
			ks = append(ks, string(r.Message.Payload))
		}
	}
	if strings.Join(ks, ",") != "k/0,k/1" {
		t.Errorf("key k claimed as %v, want [k/0 k/1]", ks)
	}
}

// A whole-call error that is not transient makes the relay publish the
// batch row by row: the row at fault is charged, the others go through.
func TestRelayIsolatesCulprit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := outboxtest.MemoryBroker(t)
	bad := outboxtest.SeqMessage("t", "a", 0)
	var (
		mu    sync.Mutex
		calls []int // sizes of the calls carrying the bad message
	)
	pub := publisherFunc(func(ctx context.Context, msgs ...broker.Message) error {
		for _, m := range msgs {
			if m.ID == bad.ID {
				mu.Lock()
				calls = append(calls, len(msgs))
				mu.Unlock()
				return errors.New("the whole call failed")
			}
		}
		return b.Publisher.Publish(ctx, msgs...)
	})
	msgs := []broker.Message{bad, outboxtest.SeqMessage("t", "a", 1)}
	for i := range 5 {
		msgs = append(msgs, outboxtest.SeqMessage("t", "b", i))
	}
	if err := h.store.Enqueue(ctx, h.pool, msgs...); err != nil {
		t.Fatal(err)
	}
	r, err := outbox.NewRelay(h.store, pub, outbox.Config{MaxAttempts: 3, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	n, err := r.RunOnce(ctx)
	if err != nil || n != 7 {
		t.Fatalf("RunOnce = %d, %v; want 7 rows claimed", n, err)
	}
	// The batch failed, then a/0 alone failed; b's rows went one by one;
	// a/1 waits behind a/0.
	if fmt.Sprint(calls) != "[7 1]" {
		t.Errorf("calls carrying the bad message had sizes %v, want [7 1]", calls)
	}
	if got := len(b.Publisher.(*memory.Broker).Published("t")); got != 5 {
		t.Errorf("%d messages published, want b's 5", got)
	}
	st, err := h.store.Stats(ctx)
	if err != nil || st.Pending != 2 {
		t.Errorf("stats: %+v, %v; want a/0 and a/1 pending", st, err)
	}
	c, err := h.store.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Records()) != 0 {
		t.Errorf("claimed %d rows; a/0 should wait for its retry and block a/1", len(c.Records()))
	}
	_ = c.Release(ctx)
	var attempts int
	var lastErr string
	if err := h.pool.QueryRow(ctx, "SELECT attempts, last_error FROM "+h.store.Table()+" WHERE message_id = $1", bad.ID).
		Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || lastErr != "the whole call failed" {
		t.Errorf("a/0: attempts %d, last error %q; want 1, the broker's error", attempts, lastErr)
	}
}

// Options of the relay are validated.
func TestRelayConfig(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	b := outboxtest.MemoryBroker(t)
	for _, cfg := range []outbox.Config{
		{BatchSize: -1}, {MaxAttempts: -1}, {PollInterval: -1}, {PublishTimeout: -1}, {CleanupBatch: -1}, {MaxMessageBytes: -1},
	} {
		if _, err := outbox.NewRelay(h.store, b.Publisher, cfg); !errors.Is(err, outbox.ErrInvalidConfig) {
			t.Errorf("NewRelay(%+v): err = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := outbox.NewRelay(nil, b.Publisher, outbox.Config{}); !errors.Is(err, outbox.ErrInvalidConfig) {
		t.Errorf("NewRelay(nil store): err = %v", err)
	}
	if _, err := outbox.NewRelay(h.store, nil, outbox.Config{}); !errors.Is(err, outbox.ErrInvalidConfig) {
		t.Errorf("NewRelay(nil publisher): err = %v", err)
	}
	r, err := outbox.NewRelay(h.store, b.Publisher, outbox.Config{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	// Of two concurrent Run calls, one runs and the other fails at once.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- r.Run(ctx) }()
	}
	first := <-done
	if !errors.Is(first, outbox.ErrRunning) {
		t.Errorf("the first Run to return gave %v, want ErrRunning", first)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancel: %v", err)
	}
}
