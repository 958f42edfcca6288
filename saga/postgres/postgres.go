package postgres

import (
	"context"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/pgtable"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/internal/sagastore"
)

const pkg = "saga/postgres"

//go:embed schema.sql
var schemaTemplate string

// ErrInvalidTable is wrapped by the errors of New, Schema and Migrate (and
// their participant and flow counterparts) for a bad table name.
var ErrInvalidTable = pgtable.ErrInvalidTable

// ErrInvalidConfig is wrapped by constructor errors other than a bad
// table name (a nil pool or outbox, a bad channel). It matches
// saga.ErrInvalidConfig too.
var ErrInvalidConfig = fmt.Errorf("%s: %w", pkg, saga.ErrInvalidConfig)

// DB is what the package-level Migrate functions take: pgx.Tx,
// *pgxpool.Pool and *pgx.Conn satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

var (
	_ DB = pgx.Tx(nil)
	_ DB = (*pgxpool.Pool)(nil)
	_ DB = (*pgx.Conn)(nil)
)

// Outbox is where transitions (and participants) enqueue the messages they
// send, in their own transaction. *outbox/postgres.Store implements it;
// run an outbox.Relay on that store to publish them.
type Outbox interface {
	Enqueue(ctx context.Context, db outboxpg.DB, msgs ...broker.Message) error
}

var _ Outbox = (*outboxpg.Store)(nil)

// DefaultTable is the instances table when Config.Table is empty; the
// history table is its name followed by "_history".
const DefaultTable = "saga"

// maxSuffix is the longest suffix derived from the table name
// ("_history_message").
const maxSuffix = len("_history_message")

// Config configures a Store.
type Config struct {
	// Table is the instances table, "name" or "schema.name" (lowercase
	// letters, digits, underscores); the history table is its sibling
	// name + "_history". Default DefaultTable.
	Table string
	// Outbox receives the commands (and park events) of transitions, in
	// the transition's transaction. Required.
	Outbox Outbox
	// Channel is the LISTEN/NOTIFY channel that wakes engines when a timer
	// is due soon or an operator request arrives. Default
	// "steadfast.saga." + Table (shortened with a hash past 63 bytes).
	Channel string
}

// Store is the saga.Store on PostgreSQL. It is safe for concurrent use by
// any number of engines, in any number of processes.
//
// A transition is one transaction: a plain read of the instance row (and a
// probe of the history's message index for the triggering message), the
// engine's decision and local steps (each in a savepoint), then one
// statement that updates the row where its revision is still the one read
// and appends the history, then the outbox rows, then the commit. A
// concurrent transition of the same instance blocks on the row lock at its
// update and, once the first commits, finds the revision changed and
// updates nothing: it reports saga.ErrConflict and the engine decides again
// in a fresh transaction. ClaimDue locks due rows FOR UPDATE SKIP LOCKED,
// so engines firing timers never wait for each other.
type Store struct {
	pool    *pgxpool.Pool
	out     Outbox
	name    pgtable.Name
	channel string
	sql     statements
	ddl     string
}

var (
	_ saga.Store    = (*Store)(nil)
	_ saga.Notifier = (*Store)(nil)
)

// New returns a store on pool. It does not touch the database: call
// Migrate (or apply Schema with your migration tool) first.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	if cfg.Outbox == nil {
		return nil, fmt.Errorf("%w: nil Outbox", ErrInvalidConfig)
	}
	name, err := pgtable.Parse(pkg, cfg.Table, DefaultTable, maxSuffix)
	if err != nil {
		return nil, err
	}
	ch, err := channel(cfg.Channel, "steadfast.saga."+name.String())
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, out: cfg.Outbox, name: name, channel: ch, sql: buildStatements(name, ch),
		ddl: renderSchema(name)}, nil
}

// channel validates a notification channel, deriving it from def when
// empty.
func channel(ch, def string) (string, error) {
	if ch == "" {
		ch = def
		if len(ch) > 63 {
			h := fnv.New64a()
			h.Write([]byte(def))
			ch = ch[:46] + "_" + hex.EncodeToString(h.Sum(nil))
		}
	}
	if len(ch) > 63 || strings.ContainsRune(ch, 0) {
		return "", fmt.Errorf("%w: channel %q: at most 63 bytes, no NUL", ErrInvalidConfig, ch)
	}
	return ch, nil
}

func renderSchema(n pgtable.Name) string {
	return strings.NewReplacer(
		"{t}", n.Ident(),
		"{h}", n.Sibling("_history"),
		"{status_check}", n.Derived("_status_check"),
		"{wake_index}", n.Derived("_wake"),
		"{open_index}", n.Derived("_open"),
		"{ended_index}", n.Derived("_ended"),
		"{message_index}", n.Derived("_history_message"),
	).Replace(schemaTemplate)
}

// Schema returns the DDL of the instances and history tables for table
// ("" means DefaultTable), for migration tools. Every statement is
// idempotent. The error wraps ErrInvalidTable.
func Schema(table string) (string, error) {
	n, err := pgtable.Parse(pkg, table, DefaultTable, maxSuffix)
	if err != nil {
		return "", err
	}
	return renderSchema(n), nil
}

// Migrate creates the tables of table ("" means DefaultTable) if missing.
// It is idempotent and safe to run from several processes at once (it
// serializes on an advisory lock); db may be a transaction of your own
// migration.
func Migrate(ctx context.Context, db DB, table string) error {
	n, err := pgtable.Parse(pkg, table, DefaultTable, maxSuffix)
	if err != nil {
		return err
	}
	return migrate(ctx, db, n, "steadfast.saga", renderSchema(n))
}

func migrate(ctx context.Context, db DB, n pgtable.Name, ns, ddl string) error {
	// CREATE ... IF NOT EXISTS is not safe against itself: serialize on a
	// transaction-scoped lock. Without arguments Exec uses the simple
	// protocol, which runs the statements in one implicit transaction.
	sql := "SELECT pg_advisory_xact_lock(" + strconv.Itoa(int(n.LockKey(ns))) + ");\n" + ddl
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: migrate %s: %w", pkg, n, err)
	}
	return nil
}

// Migrate creates the store's tables if missing (see the package-level
// Migrate).
func (s *Store) Migrate(ctx context.Context) error {
	return migrate(ctx, s.pool, s.name, "steadfast.saga", s.ddl)
}

// Schema returns the store's DDL.
func (s *Store) Schema() string { return s.ddl }

// Table returns the instances table's name as configured.
func (s *Store) Table() string { return s.name.String() }

// Channel returns the notification channel.
func (s *Store) Channel() string { return s.channel }

// TxOf returns the pgx transaction behind a saga.Tx that this package
// created: the transaction of an engine's transition, given to local steps
// and compensations, or of a participant's Handle, given to participant
// functions. It is nil for any other saga.Tx (the memory store's, for
// instance). Write through it; never commit or roll it back.
func TxOf(tx saga.Tx) pgx.Tx {
	if p, ok := tx.(interface{ pgxTx() pgx.Tx }); ok {
		return p.pgxTx()
	}
	return nil
}

// conflict maps the SQLSTATEs that mean "someone else changed it first"
// to saga.ErrConflict.
func conflict(op string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505", "40001", "40P01":
			return fmt.Errorf("%s: %s: %w (%w)", pkg, op, saga.ErrConflict, err)
		}
	}
	return fmt.Errorf("%s: %s: %w", pkg, op, err)
}

// Begin implements saga.Store.
func (s *Store) Begin(ctx context.Context) (saga.StoreTx, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: begin: %w", pkg, err)
	}
	return &storeTx{s: s, tx: tx}, nil
}

type storeTx struct {
	s      *Store
	tx     pgx.Tx
	afters []func()
	notify bool
	ended  bool
}

func (t *storeTx) pgxTx() pgx.Tx        { return t.tx }
func (t *storeTx) AfterCommit(f func()) { t.afters = append(t.afters, f) }

func (t *storeTx) Load(ctx context.Context, id, messageID string) (saga.Instance, bool, error) {
	row := t.tx.QueryRow(ctx, t.s.sql.load, id, messageID)
	in, seen, err := scanInstance(row, true)
	if errors.Is(err, pgx.ErrNoRows) {
		return in, false, fmt.Errorf("%s: load %s: %w", pkg, id, saga.ErrNotFound)
	}
	if err != nil {
		return in, false, fmt.Errorf("%s: load %s: %w", pkg, id, err)
	}
	return in, seen, nil
}

func (t *storeTx) Create(ctx context.Context, c saga.Change) (bool, error) {
	c.Instance.Revision = 1
	var n int
	if err := t.tx.QueryRow(ctx, t.s.sql.create, writeArgs(c)...).Scan(&n); err != nil {
		return false, conflict("create "+c.Instance.ID, err)
	}
	if n == 0 {
		return false, nil
	}
	return true, t.finish(ctx, c)
}

func (t *storeTx) Save(ctx context.Context, c saga.Change) error {
	var n int
	if err := t.tx.QueryRow(ctx, t.s.sql.save, writeArgs(c)...).Scan(&n); err != nil {
		return conflict("save "+c.Instance.ID, err)
	}
	if n == 0 {
		return fmt.Errorf("%s: save %s at revision %d: %w", pkg, c.Instance.ID, c.Instance.Revision, saga.ErrConflict)
	}
	return t.finish(ctx, c)
}

// finish enqueues a change's messages and remembers to notify.
func (t *storeTx) finish(ctx context.Context, c saga.Change) error {
	if len(c.Messages) > 0 {
		if err := t.s.out.Enqueue(ctx, t.tx, c.Messages...); err != nil {
			return fmt.Errorf("%s: instance %s: %w", pkg, c.Instance.ID, err)
		}
	}
	if c.Notify && !t.notify {
		t.notify = true
		if _, err := t.tx.Exec(ctx, "SELECT pg_notify($1, '')", t.s.channel); err != nil {
			return fmt.Errorf("%s: notify: %w", pkg, err)
		}
	}
	return nil
}

func (t *storeTx) Savepoint(ctx context.Context, fn func(ctx context.Context, tx saga.Tx) error) error {
	return savepoint(ctx, t.tx, &t.afters, fn)
}

// savepoint runs fn in a nested pgx transaction (SAVEPOINT); on error it
// rolls back to the savepoint, keeping the outer transaction usable.
func savepoint(ctx context.Context, outer pgx.Tx, afters *[]func(), fn func(ctx context.Context, tx saga.Tx) error) error {
	sp, err := outer.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%s: savepoint: %w", pkg, err)
	}
	st := &nestedTx{tx: sp}
	if err := fn(ctx, st); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if rerr := sp.Rollback(rctx); rerr != nil {
			return errors.Join(err, fmt.Errorf("%s: rollback to savepoint: %w", pkg, rerr))
		}
		return err
	}
	if err := sp.Commit(ctx); err != nil {
		return fmt.Errorf("%s: release savepoint: %w", pkg, err)
	}
	*afters = append(*afters, st.afters...)
	return nil
}

type nestedTx struct {
	tx     pgx.Tx
	afters []func()
}

func (n *nestedTx) pgxTx() pgx.Tx        { return n.tx }
func (n *nestedTx) AfterCommit(f func()) { n.afters = append(n.afters, f) }

func (t *storeTx) Commit(ctx context.Context) error {
	if t.ended {
		return fmt.Errorf("%s: commit: transaction already ended", pkg)
	}
	t.ended = true
	if err := t.tx.Commit(ctx); err != nil {
		return conflict("commit", err)
	}
	for _, f := range t.afters {
		f()
	}
	return nil
}

func (t *storeTx) Rollback(ctx context.Context) error {
	if t.ended {
		return nil
	}
	t.ended = true
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := t.tx.Rollback(rctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("%s: rollback: %w", pkg, err)
	}
	return nil
}

func keyArrays(keys []saga.DefinitionKey) ([]string, []int32) {
	types := make([]string, len(keys))
	versions := make([]int32, len(keys))
	for i, k := range keys {
		types[i], versions[i] = k.Type, int32(k.Version)
	}
	return types, versions
}

// ClaimDue implements saga.Store: one transaction that locks the earliest
// due row of a registered definition FOR UPDATE SKIP LOCKED and runs fn in
// it.
func (s *Store) ClaimDue(ctx context.Context, keys []saga.DefinitionKey, fn func(ctx context.Context, tx saga.StoreTx, inst saga.Instance) error) (bool, error) {
	types, versions := keyArrays(keys)
	st, err := s.Begin(ctx)
	if err != nil {
		return false, err
	}
	t := st.(*storeTx)
	defer func() { _ = t.Rollback(ctx) }()
	in, _, err := scanInstance(t.tx.QueryRow(ctx, s.sql.claimDue, types, versions, time.Now()), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: claim due instance: %w", pkg, err)
	}
	if err := fn(ctx, t, in); err != nil {
		return true, err
	}
	return true, t.Commit(ctx)
}

// NextWake implements saga.Store.
func (s *Store) NextWake(ctx context.Context, keys []saga.DefinitionKey) (time.Time, bool, error) {
	types, versions := keyArrays(keys)
	var next *time.Time
	if err := s.pool.QueryRow(ctx, s.sql.nextWake, types, versions).Scan(&next); err != nil {
		return time.Time{}, false, fmt.Errorf("%s: next wake: %w", pkg, err)
	}
	if next == nil {
		return time.Time{}, false, nil
	}
	return *next, true, nil
}

// Unfinished implements saga.Store.
func (s *Store) Unfinished(ctx context.Context) ([]saga.TypeVersion, error) {
	rows, err := s.pool.Query(ctx, s.sql.unfinished)
	if err != nil {
		return nil, fmt.Errorf("%s: unfinished: %w", pkg, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (saga.TypeVersion, error) {
		var tv saga.TypeVersion
		err := r.Scan(&tv.Type, &tv.Version, &tv.Instances, &tv.Example)
		return tv, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: unfinished: %w", pkg, err)
	}
	return out, nil
}

// Counts implements saga.Store.
func (s *Store) Counts(ctx context.Context) ([]saga.StatusCount, error) {
	rows, err := s.pool.Query(ctx, s.sql.counts)
	if err != nil {
		return nil, fmt.Errorf("%s: counts: %w", pkg, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (saga.StatusCount, error) {
		var c saga.StatusCount
		err := r.Scan(&c.Type, &c.Status, &c.Count)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: counts: %w", pkg, err)
	}
	return out, nil
}

// Get implements saga.Store.
func (s *Store) Get(ctx context.Context, id string) (saga.Instance, error) {
	in, _, err := scanInstance(s.pool.QueryRow(ctx, s.sql.get, id), false)
	if errors.Is(err, pgx.ErrNoRows) {
		return in, fmt.Errorf("%s: get %s: %w", pkg, id, saga.ErrNotFound)
	}
	if err != nil {
		return in, fmt.Errorf("%s: get %s: %w", pkg, id, err)
	}
	return in, nil
}

// History implements saga.Store.
func (s *Store) History(ctx context.Context, id string, afterSeq int64, limit int) ([]saga.Event, error) {
	if limit <= 0 {
		limit = -1
	}
	var lim any = limit
	if limit < 0 {
		lim = nil
	}
	rows, err := s.pool.Query(ctx, s.sql.history, id, afterSeq, lim)
	if err != nil {
		return nil, fmt.Errorf("%s: history %s: %w", pkg, id, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (saga.Event, error) {
		var ev saga.Event
		var msg *string
		var us int64
		err := r.Scan(&ev.Seq, &ev.At, &ev.Kind, &ev.Step, &ev.Attempt, &msg, &ev.Detail, &us)
		if msg != nil {
			ev.MessageID = *msg
		}
		ev.Duration = time.Duration(us) * time.Microsecond
		return ev, err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: history %s: %w", pkg, id, err)
	}
	if len(evs) == 0 {
		if _, err := s.Get(ctx, id); err != nil {
			return nil, err
		}
	}
	return evs, nil
}

// List implements saga.Store.
func (s *Store) List(ctx context.Context, q saga.Query) ([]saga.Instance, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	statuses := make([]string, len(q.Status))
	for i, st := range q.Status {
		statuses[i] = string(st)
	}
	rows, err := s.pool.Query(ctx, s.sql.list, q.AfterID, q.Type, statuses, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("%s: list: %w", pkg, err)
	}
	defer rows.Close()
	var out []saga.Instance
	for rows.Next() {
		in, _, err := scanInstance(rows, false)
		if err != nil {
			return nil, fmt.Errorf("%s: list: %w", pkg, err)
		}
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: list: %w", pkg, err)
	}
	return out, nil
}

// Request implements saga.Store: in one transaction it locks the row,
// checks the request applies, records it (with wake_at now) and an
// EventRequested, and notifies the engines.
func (s *Store) Request(ctx context.Context, id string, r saga.Request) (saga.Instance, error) {
	var out saga.Instance
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		in, _, err := scanInstance(tx.QueryRow(ctx, s.sql.getForUpdate, id), false)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s: request %s: %w", pkg, id, saga.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("%s: request %s: %w", pkg, id, err)
		}
		if err := sagastore.CheckRequest(pkg, in, r); err != nil {
			return err
		}
		ev := sagastore.ApplyRequest(&in, r, time.Now())
		c := saga.Change{Instance: in, Events: []saga.Event{ev}}
		var n int
		if err := tx.QueryRow(ctx, s.sql.save, writeArgs(c)...).Scan(&n); err != nil || n != 1 {
			return fmt.Errorf("%s: request %s: %w (rows %d)", pkg, id, err, n)
		}
		if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", s.channel); err != nil {
			return fmt.Errorf("%s: request %s: notify: %w", pkg, id, err)
		}
		in.Revision++
		out = in
		return nil
	})
	return out, err
}

// Cleanup implements saga.Store.
func (s *Store) Cleanup(ctx context.Context, finishedBefore time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	var n int
	if err := s.pool.QueryRow(ctx, s.sql.cleanup, finishedBefore, limit).Scan(&n); err != nil {
		return 0, fmt.Errorf("%s: cleanup: %w", pkg, err)
	}
	return n, nil
}

// Listen implements saga.Notifier with LISTEN on a connection of the pool,
// held until ctx is done or the connection fails.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	return listen(ctx, s.pool, s.channel, wake)
}

func listen(ctx context.Context, pool *pgxpool.Pool, ch string, wake func()) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%s: listen: %w", pkg, err)
	}
	// The connection carries LISTEN state: never hand it back to the pool.
	defer func() { _ = conn.Hijack().Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%s: listen %s: %w", pkg, ch, err)
	}
	// What was due before LISTEN took effect was not announced.
	wake()
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: listen %s: %w", pkg, ch, err)
		}
		wake()
	}
}
