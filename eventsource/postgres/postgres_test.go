package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func ev(typ, data string) eventsource.EventData {
	return eventsource.EventData{Type: typ, SchemaVersion: 1, Data: []byte(data)}
}

func appendOne(t *testing.T, ctx context.Context, s eventsource.Appender, stream string, exp eventsource.ExpectedVersion, evs ...eventsource.EventData) eventsource.AppendResult {
	t.Helper()
	res, err := s.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: exp, Events: evs})
	if err != nil {
		t.Fatalf("append to %q: %v", stream, err)
	}
	return res[0]
}

// readAll drains the log, waiting while any transaction on the server
// holds it back.
func readAll(t *testing.T, ctx context.Context, s eventsource.LogReader, until eventsource.Position) []eventsource.Record {
	t.Helper()
	var out []eventsource.Record
	pos := eventsource.Position{}
	for pos.Before(until) {
		page, err := s.ReadLog(ctx, eventsource.LogQuery{After: pos, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page.Records...)
		if page.Next == pos {
			select {
			case <-ctx.Done():
				t.Fatalf("log held back at %v: %v", pos, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
		pos = page.Next
	}
	return out
}

func TestTableNames(t *testing.T) {
	pool := testenv.Postgres(t)
	ctx := ctxT(t)
	for _, name := range []string{"x; DROP TABLE users", `ev"ents`, "Events", "a.b.c", "1events", strings.Repeat("e", 49), "", "sch.ema.x"} {
		if name == "" {
			continue
		}
		if _, err := postgres.New(pool, postgres.Config{Table: name}); !errors.Is(err, postgres.ErrInvalidTable) ||
			!strings.HasPrefix(err.Error(), "eventsource/postgres: ") {
			t.Errorf("New(%q): %v, want ErrInvalidTable", name, err)
		}
		if _, err := postgres.Schema(name); !errors.Is(err, postgres.ErrInvalidTable) {
			t.Errorf("Schema(%q): %v", name, err)
		}
		if err := postgres.Migrate(ctx, pool, name); !errors.Is(err, postgres.ErrInvalidTable) {
			t.Errorf("Migrate(%q): %v", name, err)
		}
	}
	if _, err := postgres.New(pool, postgres.Config{EncryptionKey: []byte("short")}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("a 5-byte key: %v", err)
	}
	if _, err := postgres.New(nil, postgres.Config{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("nil pool: %v", err)
	}
	// The longest allowed name derives every companion name in full.
	long := strings.Repeat("e", 48)
	ddl, err := postgres.Schema(long)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ddl, `"`+long+`_snapshots_pkey"`) || !strings.Contains(ddl, `"`+long+`_archive_pkey"`) {
		t.Fatalf("derived names: %s", ddl)
	}
	// Two stores on differently named tables in one schema are independent.
	a := newStore(t, postgres.Config{Table: "orders_events"})
	b, err := postgres.New(a.pool, postgres.Config{Table: "billing_events", Channel: testenv.Name(t, "b")})
	if err != nil {
		t.Fatal(err)
	}
	// Migrations run concurrently and again.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- b.Migrate(ctx) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ra := appendOne(t, ctx, a, "x-1", eventsource.NoStream, ev("t", "{}"))
	rb := appendOne(t, ctx, b, "x-1", eventsource.NoStream, ev("t", "{}"), ev("t", "{}"))
	if ra.Version != 1 || rb.Version != 2 {
		t.Fatalf("versions %d and %d", ra.Version, rb.Version)
	}
	if got := readAll(t, ctx, b, rb.Position()); len(got) != 2 {
		t.Fatalf("the second store's log holds %d events", len(got))
	}
}

func TestTransactionIDsAreXid8(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	res := appendOne(t, ctx, s.In(tx), "x-1", eventsource.NoStream, ev("t", "{}"), ev("t", "{}"))
	var xid uint64
	if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::numeric::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if res.Positions[0].Transaction != xid || res.Positions[1].Transaction != xid {
		t.Fatalf("positions %v, transaction %d", res.Positions, xid)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// The checkpoint is compared as a 64-bit xid8: the 32-bit xid of a
	// transaction 2^32 later would wrap around to this one's.
	ahead := eventsource.Position{Transaction: xid + 1<<32}
	if _, err := s.ReadLog(ctx, eventsource.LogQuery{After: ahead}); !errors.Is(err, eventsource.ErrCheckpointAhead) {
		t.Fatalf("a checkpoint 2^32 transactions ahead: %v", err)
	}
}

// TestReaderInsideItsOwnTransaction: a reader in a transaction that has
// written cannot read past itself (its own transaction is open), and the
// stall inspector names its own session.
func TestReaderInsideItsOwnTransaction(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	before := appendOne(t, ctx, s, "a-1", eventsource.NoStream, ev("t", "{}"))
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	own := appendOne(t, ctx, s.In(tx), "own-1", eventsource.NoStream, ev("t", "{}"))
	later := appendOne(t, ctx, s, "b-1", eventsource.NoStream, ev("t", "{}"))
	// Everything before the transaction is read; nothing from it on.
	var seen []eventsource.Record
	pos := eventsource.Position{}
	for pos.Before(before.Position()) {
		page, err := s.In(tx).ReadLog(ctx, eventsource.LogQuery{After: pos})
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, page.Records...)
		pos = page.Next
		time.Sleep(5 * time.Millisecond)
	}
	page, err := s.In(tx).ReadLog(ctx, eventsource.LogQuery{After: pos})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Records) != 0 || page.Fence > own.Position().Transaction || !page.HeldBack || !page.Next.Before(own.Position()) {
		t.Fatalf("inside its own transaction: %+v (own %v, later %v)", page, own.Position(), later.Position())
	}
	if page.Fence == own.Position().Transaction {
		b, err := s.Blocker(ctx, page.Fence)
		if err != nil || b.PID != pid || b.State == "" {
			t.Fatalf("blocker %+v (%v), want pid %d", b, err, pid)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	all := readAll(t, ctx, s, later.Position())
	if len(all) != 3 || all[1].Position != own.Position() || all[2].Position != later.Position() {
		t.Fatalf("after commit: %+v", all)
	}
}

// TestAppenderAloneHoldsTheFence: while one appending transaction is open
// the fence is at most its ID, and everything committed before it is
// readable.
func TestAppenderAloneHoldsTheFence(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	first := appendOne(t, ctx, s, "a-1", eventsource.NoStream, ev("t", "{}"))
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	held := appendOne(t, ctx, s.In(tx), "a-1", 1, ev("t", "{}"))
	got := readAll(t, ctx, s, first.Position())
	if len(got) != 1 {
		t.Fatalf("before the open transaction: %d events", len(got))
	}
	page, err := s.ReadLog(ctx, eventsource.LogQuery{After: got[0].Position})
	if err != nil || len(page.Records) != 0 || page.Fence > held.Position().Transaction {
		t.Fatalf("with the appender open: %+v, %v", page, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if all := readAll(t, ctx, s, held.Position()); len(all) != 2 {
		t.Fatalf("after commit: %d events", len(all))
	}
}

// TestCheckpointAheadAfterRestore: a database restored from an older
// backup has handed out fewer sequence numbers than a projection's stored
// checkpoint; the reader refuses instead of skipping what comes next.
func TestCheckpointAheadAfterRestore(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	var last eventsource.AppendResult
	for i := range 5 {
		last = appendOne(t, ctx, s, "r-1", eventsource.ExpectedVersion(i), ev("t", "{}"))
	}
	checkpoint := last.Position()
	readAll(t, ctx, s, checkpoint)
	// The "restore": the events after the third are gone, and the sequence
	// is back where it was then.
	if _, err := s.pool.Exec(ctx, `DELETE FROM events WHERE version > 3`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, `SELECT setval('events_seq', $1)`, checkpoint.Sequence-2); err != nil {
		t.Fatal(err)
	}
	_, err := s.ReadLog(ctx, eventsource.LogQuery{After: checkpoint})
	if !errors.Is(err, eventsource.ErrCheckpointAhead) || !strings.Contains(err.Error(), "backup") {
		t.Fatalf("read after a checkpoint ahead of the restored sequence: %v", err)
	}
}

// TestEventsFromAnotherCluster: events whose transaction IDs the server
// has not assigned (a logical restore into another cluster) would hold
// every reader back for good; the read fails and says why.
func TestEventsFromAnotherCluster(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	appendOne(t, ctx, s, "r-1", eventsource.NoStream, ev("t", "{}"))
	if _, err := s.pool.Exec(ctx, `UPDATE events SET transaction_id =
		(pg_snapshot_xmax(pg_current_snapshot())::text::numeric + 1000000)::text::xid8`); err != nil {
		t.Fatal(err)
	}
	_, err := s.ReadLog(ctx, eventsource.LogQuery{})
	if !errors.Is(err, eventsource.ErrCheckpointAhead) || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("read of events from another cluster: %v", err)
	}
}

// TestOutbox: appended events are enqueued as outbox messages in the same
// transaction: committed together, rolled back together, never twice.
func TestOutbox(t *testing.T) {
	ctx := ctxT(t)
	pool := newStore(t, postgres.Config{}).pool
	ob, err := outboxpg.New(pool, outboxpg.Config{Table: "es_outbox", Channel: testenv.Name(t, "ob")})
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := postgres.New(pool, postgres.Config{Table: "ob_events", Channel: testenv.Name(t, "es"), Outbox: ob,
		EncryptionKey: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	type row struct {
		ID, Topic, Key string
		Payload        []byte
		Headers        map[string]string
	}
	rows := func() []row {
		rs, err := pool.Query(ctx, `SELECT message_id, topic, key, payload, headers FROM es_outbox ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rs, func(r pgx.CollectableRow) (row, error) {
			var x row
			return x, r.Scan(&x.ID, &x.Topic, &x.Key, &x.Payload, &x.Headers)
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	e := ev("order.placed", `{"total":12}`)
	e.Metadata = eventsource.Metadata{broker.HeaderCorrelationID: "corr-9"}
	res := appendOne(t, ctx, s, "order-7", eventsource.NoStream, e)
	got := rows()
	if len(got) != 1 {
		t.Fatalf("outbox rows: %+v", got)
	}
	m := got[0]
	if m.Topic != "order" || m.Key != "order-7" || string(m.Payload) != `{"total":12}` || m.Headers[broker.HeaderType] != "order.placed" ||
		m.Headers[broker.HeaderCorrelationID] != "corr-9" || m.Headers[eventsource.HeaderPosition] != res.Position().String() ||
		m.Headers[eventsource.HeaderStreamVersion] != "1" || m.Headers[eventsource.HeaderSchemaVersion] != "1" {
		t.Fatalf("outbox message %+v", m)
	}
	recs, err := collect(s.ReadStream(ctx, "order-7", eventsource.ReadOptions{}))
	if err != nil || recs[0].ID != m.ID {
		t.Fatalf("message ID %q, event %+v (%v)", m.ID, recs, err)
	}
	// A retried append enqueues nothing.
	e.ID = m.ID
	if again := appendOne(t, ctx, s, "order-7", eventsource.NoStream, e); !again.Duplicate || len(rows()) != 1 {
		t.Fatalf("retry: %+v, %d rows", again, len(rows()))
	}
	// In a transaction that rolls back: neither events nor messages.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.In(tx).Append(ctx,
		eventsource.StreamAppend{StreamID: "order-8", Expected: eventsource.NoStream, Events: []eventsource.EventData{ev("order.placed", "{}")}},
		eventsource.StreamAppend{StreamID: "invoice-8", Expected: eventsource.NoStream, Events: []eventsource.EventData{ev("invoice.raised", "{}")}},
	); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rows()) != 1 {
		t.Fatalf("rolled back: %d rows", len(rows()))
	}
	// A conflict enqueues nothing and leaves the transaction usable.
	tx, err = pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.In(tx).Append(ctx, eventsource.StreamAppend{StreamID: "order-7", Expected: eventsource.NoStream,
		Events: []eventsource.EventData{ev("order.placed", "{}")}}); !errors.Is(err, eventsource.ErrConcurrency) {
		t.Fatalf("conflict: %v", err)
	}
	appendOne(t, ctx, s.In(tx), "order-7", 1, ev("order.paid", "{}"))
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rows(); len(got) != 2 || got[1].Headers[broker.HeaderType] != "order.paid" {
		t.Fatalf("after the conflict: %+v", got)
	}
	// The outbox failing fails the append, and nothing is stored.
	if _, err := pool.Exec(ctx, `ALTER TABLE es_outbox RENAME TO es_outbox_gone`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: "order-9", Expected: eventsource.NoStream,
		Events: []eventsource.EventData{ev("order.placed", "{}")}}); err == nil || !strings.Contains(err.Error(), "outbox") {
		t.Fatalf("append with a broken outbox: %v", err)
	}
	if _, err := collect(s.ReadStream(ctx, "order-9", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("the events of a failed outbox append: %v", err)
	}
}

func collect(seq func(func(eventsource.Record, error) bool)) ([]eventsource.Record, error) {
	var out []eventsource.Record
	for r, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// TestCrashMidAppend: the connection of an append dies while it waits for
// a stream's lock; the caller gets ErrUnavailable (the append may or may
// not have committed) and retries with the same event IDs: the events are
// stored once.
func TestCrashMidAppend(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	appendOne(t, ctx, s, "c-1", eventsource.NoStream, ev("t", "{}"))
	blocker, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx)
	appendOne(t, ctx, s.In(blocker), "c-1", 1, ev("t", "{}")) // holds the stream's row
	conn, err := pgx.Connect(ctx, s.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	evs := []eventsource.EventData{ev("t", `{"n":1}`), ev("t", `{"n":2}`)}
	evs[0].ID, evs[1].ID = "crash-1", "crash-2"
	done := make(chan error, 1)
	go func() {
		_, err := s.In(conn).Append(ctx, eventsource.StreamAppend{StreamID: "c-1", Expected: eventsource.AnyVersion, Events: evs})
		done <- err
	}()
	// Wait until it waits for the lock, then kill its session.
	for {
		var waiting bool
		if err := s.pool.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, eventsource.ErrUnavailable) {
		t.Fatalf("append on a killed session: %v, want ErrUnavailable", err)
	}
	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the retry, and a retry of the retry
		res, err := s.Append(ctx, eventsource.StreamAppend{StreamID: "c-1", Expected: eventsource.AnyVersion, Events: evs})
		if err != nil || res[0].Version != 4 {
			t.Fatalf("retry: %+v, %v", res, err)
		}
	}
	recs, err := collect(s.ReadStream(ctx, "c-1", eventsource.ReadOptions{}))
	if err != nil || len(recs) != 4 || recs[2].ID != "crash-1" || recs[3].ID != "crash-2" {
		t.Fatalf("stream after the retries: %+v, %v", recs, err)
	}
}

// TestEncryptionAtRest: with an EncryptionKey the tables hold no plain
// payload or snapshot; another key cannot read them; shredding deletes the
// key.
func TestEncryptionAtRest(t *testing.T) {
	ctx := ctxT(t)
	key := bytes.Repeat([]byte{1}, 32)
	s := newStore(t, postgres.Config{EncryptionKey: key})
	appendOne(t, ctx, s, "user-1", eventsource.NoStream, ev("user.named", `{"name":"Grace Hopper"}`))
	if err := s.SaveSnapshot(ctx, eventsource.Snapshot{StreamID: "user-1", Version: 1, EventID: "x", SchemaVersion: 1,
		Data: []byte(`{"name":"Grace Hopper"}`)}); err != nil {
		t.Fatal(err)
	}
	var dump string
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT string_agg(encode(data, 'escape'), '') FROM events) ||
		(SELECT string_agg(encode(data, 'escape'), '') FROM events_snapshots) || (SELECT string_agg(encode(key, 'escape'), '') FROM events_keys)`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump, "Grace") {
		t.Fatal("a plain payload is stored")
	}
	recs, err := collect(s.ReadStream(ctx, "user-1", eventsource.ReadOptions{}))
	if err != nil || string(recs[0].Data) != `{"name":"Grace Hopper"}` {
		t.Fatalf("read: %+v, %v", recs, err)
	}
	snap, ok, err := s.LoadSnapshot(ctx, "user-1")
	if err != nil || !ok || string(snap.Data) != `{"name":"Grace Hopper"}` {
		t.Fatalf("snapshot: %+v, %v, %v", snap, ok, err)
	}
	other, err := postgres.New(s.pool, postgres.Config{EncryptionKey: bytes.Repeat([]byte{2}, 32), Channel: testenv.Name(t, "o")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := collect(other.ReadStream(ctx, "user-1", eventsource.ReadOptions{})); err == nil || !strings.Contains(err.Error(), "EncryptionKey") {
		t.Fatalf("read with another key: %v", err)
	}
	plain, err := postgres.New(s.pool, postgres.Config{Channel: testenv.Name(t, "p")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := collect(plain.ReadStream(ctx, "user-1", eventsource.ReadOptions{})); err == nil || !strings.Contains(err.Error(), "no EncryptionKey") {
		t.Fatalf("read without a key: %v", err)
	}
	// A payload moved to another event does not open.
	if _, err := s.pool.Exec(ctx, `INSERT INTO events (stream_id, version, event_id, type, schema_version, data, encrypted)
		SELECT stream_id, 2, 'moved', type, schema_version, data, true FROM events WHERE stream_id = 'user-1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := collect(s.ReadStream(ctx, "user-1", eventsource.ReadOptions{})); err == nil || !strings.Contains(err.Error(), "decrypt") {
		t.Fatalf("read of a moved ciphertext: %v", err)
	}
	if err := s.ShredStream(ctx, "user-1"); err != nil {
		t.Fatal(err)
	}
	var gone bool
	if err := s.pool.QueryRow(ctx, `SELECT key IS NULL AND shredded_at IS NOT NULL FROM events_keys WHERE stream_id = 'user-1'`).Scan(&gone); err != nil || !gone {
		t.Fatalf("key after shredding: %v, %v", gone, err)
	}
}

// TestSerializationFailureIsAConflict: under REPEATABLE READ, an append to
// a stream another transaction changed since the snapshot fails with
// PostgreSQL's serialization error, reported as ErrConcurrency.
func TestSerializationFailureIsAConflict(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{})
	appendOne(t, ctx, s, "rr-1", eventsource.NoStream, ev("t", "{}"))
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := collect(s.In(tx).ReadStream(ctx, "rr-1", eventsource.ReadOptions{})); err != nil { // takes the snapshot
		t.Fatal(err)
	}
	appendOne(t, ctx, s, "rr-1", 1, ev("t", "{}"))
	_, err = s.In(tx).Append(ctx, eventsource.StreamAppend{StreamID: "rr-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{ev("t", "{}")}})
	if !errors.Is(err, eventsource.ErrConcurrency) || !strings.Contains(err.Error(), "40001") {
		t.Fatalf("append in a stale REPEATABLE READ snapshot: %v", err)
	}
}

// TestPollingWithoutNotify: with notifications off, a reader still gets
// every event by polling.
func TestPollingWithoutNotify(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t, postgres.Config{DisableNotify: true})
	reg := eventsource.NewRegistry()
	type T struct{}
	eventsource.Register[T](reg, "t", 1)
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- r.Run(runCtx, eventsource.Position{}, func(_ context.Context, b eventsource.Batch) error {
			mu.Lock()
			n += len(b.Events)
			mu.Unlock()
			return nil
		})
	}()
	for i := range 3 {
		appendOne(t, ctx, s, fmt.Sprintf("p-%d", i), eventsource.NoStream, ev("t", "{}"))
	}
	for {
		mu.Lock()
		got := n
		mu.Unlock()
		if got == 3 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("polled %d of 3 events", got)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
