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
		"Outbox", "billing.Outbox", strings.Repeat("x", 51), strings.Repeat("s", 64) + ".outbox",
	} {
		_, err := postgres.New(pool, postgres.Config{Table: table})
		if !errors.Is(err, postgres.ErrInvalidConfig) || !errors.Is(err, postgres.ErrInvalidTable) {
			t.Errorf("New with table %q: err = %v, want ErrInvalidConfig and ErrInvalidTable", table, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "outbox/postgres: ") {
			t.Errorf("New with table %q: error %q does not name the package", table, err)
		}
		if _, err := postgres.Schema(table); !errors.Is(err, postgres.ErrInvalidConfig) || !errors.Is(err, postgres.ErrInvalidTable) {
			t.Errorf("Schema(%q): err = %v, want ErrInvalidConfig and ErrInvalidTable", table, err)
		}
		if err := postgres.Migrate(context.Background(), pool, table); !errors.Is(err, postgres.ErrInvalidTable) {
			t.Errorf("Migrate(%q): err = %v, want ErrInvalidTable", table, err)
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
	s, err := postgres.New(pool, postgres.Config{Table: strings.Repeat("s", 63) + "." + strings.Repeat("t", 50)})
	if err != nil {
		t.Fatalf("a 50-byte table name: %v", err)
	}
	if len(s.Channel()) > 63 {
		t.Errorf("default channel %q is longer than 63 bytes", s.Channel())
	}
}

// A schema-qualified table whose name must be quoted (table names are
// lowercase by the library's rule, so only a reserved word needs quoting:
// "order") is quoted everywhere: migrate, enqueue, claim, admin.
func TestQuotedTable(t *testing.T) {
	t.Parallel()
	pool, _, schema := testenv.PostgresDB(t)
	ctx := context.Background()
	table := schema + ".order"
	s, err := postgres.New(pool, postgres.Config{Table: table, Channel: testenv.Name(t, "ch")})
	if err != nil {
		t.Fatal(err)
	}
	if want := (pgx.Identifier{schema, "order"}).Sanitize(); s.Table() != want {
		t.Errorf("Table() = %s, want %s", s.Table(), want)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, table); err != nil {
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
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+s.Table()).Scan(&n); err != nil || n != 1 {
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
		{BatchSize: -1}, {MaxAttempts: -1}, {PollInterval: -1}, {PublishTimeout: -1}, {CleanupBatch: -1},
		{Backoff: broker.Backoff{Initial: -time.Second}}, {Backoff: broker.Backoff{Initial: time.Hour, Max: time.Second}},
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

// An idle claim ends after Config.ClaimTimeout: PostgreSQL ends its session,
// which releases its rows and keys. Until then a second relay claims neither
// the claimed rows nor later rows of their keys (other keys flow); afterwards
// it claims the same rows, in the same order, and completes them, while the
// stale claim's Complete fails and changes nothing.
//
// Whether the second relay really ran while the first claim was held is
// checked, not assumed: the first claim's session must still be open after
// the second claim returned. If it already timed out (a very slow machine),
// that round proves nothing and the test starts over with a longer timeout.
func TestClaimTimeoutReleasesIdleClaim(t *testing.T) {
	t.Parallel()
	for _, timeout := range []time.Duration{postgres.MinClaimTimeout, 5 * time.Second, 30 * time.Second} {
		if claimTimeoutRound(t, timeout) {
			return
		}
		t.Logf("ClaimTimeout %v elapsed before the contention check ended; retrying with a longer one", timeout)
	}
	t.Fatal("the first claim's session always ended before a second claim could run")
}

// claimTimeoutRound runs TestClaimTimeoutReleasesIdleClaim on a fresh
// table with the given ClaimTimeout. It reports false when the contention
// check was inconclusive.
func claimTimeoutRound(t *testing.T, timeout time.Duration) bool {
	h := newHarness(t, postgres.Config{ClaimTimeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), timeout+2*time.Minute)
	defer cancel()
	var msgs []broker.Message
	for i := range 3 {
		msgs = append(msgs, outboxtest.SeqMessage("t", "a", i), outboxtest.SeqMessage("t", "b", i))
	}
	if err := h.store.Enqueue(ctx, h.pool, msgs...); err != nil {
		t.Fatal(err)
	}
	stale, other := h.open(t), h.open(t)
	// Every claim is ended on the way out, also when the test fails: a pool
	// does not close while a claim holds one of its connections.
	var claims []outbox.Claim
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, c := range claims {
			_ = c.Release(ctx)
		}
	}()
	claim := func(s *postgres.Store) outbox.Claim {
		t.Helper()
		c, err := s.Claim(ctx, outbox.ClaimRequest{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, c)
		return c
	}

	first := claim(stale)
	held := first.Records()
	if got := seqs(held); got != "a/0 b/0 a/1 b/1 a/2 b/2" {
		t.Fatalf("first claim: %s, want every row", got)
	}
	session, err := h.claimSession(ctx, stale)
	if err != nil {
		t.Fatal(err)
	}

	// While the claim is held: a later row of a held key waits behind it (the
	// key lock), a row of another key is claimed.
	later, free := outboxtest.SeqMessage("t", "a", 3), outboxtest.SeqMessage("t", "c", 0)
	if err := h.store.Enqueue(ctx, h.pool, later, free); err != nil {
		t.Fatal(err)
	}
	during := claim(other)
	if alive, err := h.sessionAlive(ctx, session); err != nil {
		t.Fatal(err)
	} else if !alive {
		return false
	}
	if got := seqs(during.Records()); got != "c/0" {
		t.Fatalf("second relay claimed %q while the first claim was held; want only c/0", got)
	}
	if err := during.Complete(ctx, outbox.Outcome{Published: ids(during.Records())}); err != nil {
		t.Fatal(err)
	}

	// After ClaimTimeout the server ends the first claim's session and a
	// second relay gets its rows: the same rows in the same order, then a/3.
	var again outbox.Claim
	deadline := time.Now().Add(timeout + time.Minute)
	for {
		c := claim(other)
		if len(c.Records()) > 0 {
			again = c
			break
		}
		_ = c.Release(ctx)
		if time.Now().After(deadline) {
			t.Fatalf("no relay could claim the rows of a claim idle for %v (ClaimTimeout %v)", timeout+time.Minute, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	want := append(ids(held), 0)
	want[len(want)-1] = findID(t, h, later.ID)
	if got := ids(again.Records()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the timeout the second relay claimed ids %v (%s), want %v", got, seqs(again.Records()), want)
	}
	if got := seqs(again.Records()); got != "a/0 b/0 a/1 b/1 a/2 b/2 a/3" {
		t.Errorf("reclaimed rows in order %s", got)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		alive, err := h.sessionAlive(ctx, session)
		if err != nil {
			t.Fatal(err)
		}
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rows were released but the idle claim's session is still open")
		}
	}
	if err := again.Complete(ctx, outbox.Outcome{Published: ids(again.Records())}); err != nil {
		t.Fatalf("completing the reclaimed rows: %v", err)
	}
	before, err := rowStates(ctx, h)
	if err != nil {
		t.Fatal(err)
	}

	// The stale claim cannot complete: its transaction is gone.
	err = first.Complete(ctx, outbox.Outcome{Published: ids(held)})
	if err == nil {
		t.Fatal("Complete of a claim whose session the server ended succeeded")
	}
	t.Logf("stale Complete: %v", err)
	after, err := rowStates(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Errorf("the failed Complete changed rows:\nbefore %s\nafter  %s", before, after)
	}
	var published int
	if err := h.pool.QueryRow(ctx, "SELECT count(*) FROM "+h.store.Table()+" WHERE status = 'published' AND attempts = 0").
		Scan(&published); err != nil {
		t.Fatal(err)
	}
	if published != len(msgs)+2 {
		t.Errorf("%d rows published, want all %d", published, len(msgs)+2)
	}
	if st, err := h.store.Stats(ctx); err != nil || st.Pending != 0 || st.Dead != 0 {
		t.Errorf("stats: %+v, %v; want nothing pending or parked", st, err)
	}
	for _, s := range []*postgres.Store{stale, other} {
		if c := claim(s); len(c.Records()) != 0 {
			t.Errorf("claimed %s after everything was published", seqs(c.Records()))
		}
	}
	return true
}

// ClaimTimeout is converted to PostgreSQL's milliseconds within its range:
// one beyond the server's maximum (about 24 days) does not make every claim
// fail, and one below MinClaimTimeout is refused.
func TestClaimTimeoutBounds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var claims []outbox.Claim
	defer func() {
		for _, c := range claims {
			_ = c.Release(context.Background())
		}
	}()
	claim := func(s *postgres.Store) outbox.Claim {
		t.Helper()
		c, err := s.Claim(ctx, outbox.ClaimRequest{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, c)
		return c
	}

	long := newHarness(t, postgres.Config{ClaimTimeout: 1000 * time.Hour})
	if err := long.store.Enqueue(ctx, long.pool, outboxtest.SeqMessage("t", "k", 0)); err != nil {
		t.Fatal(err)
	}
	if c := claim(long.store); len(c.Records()) != 1 {
		t.Errorf("ClaimTimeout 1000h: claimed %d rows, want 1", len(c.Records()))
	}

	// A timeout a claim's own round trips could outlast on a loaded machine
	// is refused up front, rather than failing claims at random.
	for _, d := range []time.Duration{time.Nanosecond, time.Millisecond, postgres.MinClaimTimeout - 1} {
		if _, err := postgres.New(long.pool, postgres.Config{ClaimTimeout: d}); !errors.Is(err, postgres.ErrInvalidConfig) {
			t.Errorf("ClaimTimeout %v: New = %v, want ErrInvalidConfig", d, err)
		}
	}
}

// pgSession identifies one transaction of one server session.
type pgSession struct {
	pid   int
	start time.Time
}

// claimSession returns the transaction that holds s's only claim.
func (h *harness) claimSession(ctx context.Context, s *postgres.Store) (pgSession, error) {
	h.mu.Lock()
	app := h.apps[s]
	h.mu.Unlock()
	var x pgSession
	err := h.pool.QueryRow(ctx, `SELECT pid, xact_start FROM pg_stat_activity
		WHERE application_name = $1 AND state = 'idle in transaction'`, app).Scan(&x.pid, &x.start)
	if err != nil {
		return x, fmt.Errorf("the claim's session: %w", err)
	}
	return x, nil
}

// sessionAlive reports whether x's transaction is still open.
func (h *harness) sessionAlive(ctx context.Context, x pgSession) (bool, error) {
	var alive bool
	err := h.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity
		WHERE pid = $1 AND xact_start = $2)`, x.pid, x.start).Scan(&alive)
	return alive, err
}

// rowStates renders every row's id, status, attempts and published_at.
func rowStates(ctx context.Context, h *harness) (string, error) {
	var s string
	err := h.pool.QueryRow(ctx, `SELECT coalesce(string_agg(format('%s:%s:%s:%s', id, status, attempts, published_at), ' ' ORDER BY id), '')
		FROM `+h.store.Table()).Scan(&s)
	return s, err
}

// findID returns the row id of the message with the given message ID.
func findID(t *testing.T, h *harness, messageID string) int64 {
	t.Helper()
	var id int64
	if err := h.pool.QueryRow(context.Background(), "SELECT id FROM "+h.store.Table()+" WHERE message_id = $1", messageID).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func ids(recs []outbox.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

// seqs renders the payloads (key/seq) of recs.
func seqs(recs []outbox.Record) string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Message.Payload)
	}
	return strings.Join(out, " ")
}
