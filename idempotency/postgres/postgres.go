// Package postgres is the durable idempotency.Store, on PostgreSQL with pgx
// v5.
//
// Import it as idempg, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
//
// A key is claimed by inserting a row (INSERT ... ON CONFLICT DO NOTHING)
// inside a transaction, scoped by consumer name. When that transaction also
// holds the business effect, the effect and the claim commit together or not
// at all:
//
//   - commit: the key is done; every later delivery of the message is
//     skipped, even after a crash between the commit and the broker ack;
//   - rollback, a handler error or a crash before commit: the key is free
//     again and the redelivery is processed.
//
// Store.Handler packages this as a broker.Handler ("begin, claim,
// handler(tx), commit"); Store.Claim claims in a transaction the caller runs.
// Store.Acquire implements the generic idempotency.Store port (used by the
// consumer and HTTP middleware) by holding a transaction open for the
// duration of the work.
//
// # Concurrent claims of one key
//
// Each claim first takes a transaction-level advisory lock on the key (its
// hash, within the table), then inserts. The lock is held until the claiming
// transaction ends, exactly like the uncommitted row, so a second claimer can
// tell "in progress" from "done" without waiting on the row. Config.Wait
// decides what it does when the key is in progress:
//
//   - zero (the default): it does not wait; the claim reports
//     idempotency.ErrInProgress at once and the caller's transaction stays
//     usable. The Handler returns that error so the broker redelivers the
//     message later; the HTTP middleware answers 409.
//   - positive: it waits up to that long (a transaction-local lock_timeout,
//     restored right after the claim) for the holder to end, then sees a
//     duplicate if the holder committed, or claims the key if it rolled back.
//     If the holder is still running, the claim reports ErrInProgress and the
//     caller's transaction is aborted.
//   - negative: it waits as long as ctx allows.
//
// Waiting gives an exact answer to a race that ends quickly (a redelivery
// arriving while the first delivery commits); not waiting keeps consumer
// slots and connections free when a holder hangs (a stalled handler, or a
// client cut off from the database, whose transaction the server keeps until
// it notices the dead connection). Under REPEATABLE READ or SERIALIZABLE, a
// key committed by a transaction that ended after the claimer's snapshot was
// taken surfaces as a serialization failure, also reported as ErrInProgress
// (retry later; the retry sees the duplicate).
//
// Hash collisions between keys of one table can only make a claim report
// ErrInProgress while another key is held (a retry then succeeds), never a
// false duplicate: duplicates are decided by the row's primary key.
//
// # Schema
//
// One table (default steadfast_idempotency), created by Migrate, or by your
// migration tool from Schema. Rows are kept until Cleanup (or RunCleanup)
// deletes those older than the retention, which must exceed the longest time
// a redelivery can take to arrive.
package postgres

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// DB is what functions joining the caller's transaction take. pgx.Tx,
// *pgxpool.Pool and *pgx.Conn satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var (
	_ DB = pgx.Tx(nil)
	_ DB = (*pgxpool.Pool)(nil)
	_ DB = (*pgx.Conn)(nil)
)

// Defaults for Config fields left zero.
const (
	DefaultTable     = "steadfast_idempotency"
	DefaultRetention = 7 * 24 * time.Hour
)

// Sentinel errors.
var (
	// ErrInvalidConfig is wrapped by New's errors: a nil pool, a negative
	// setting, a bad table name.
	ErrInvalidConfig = errors.New("idempotency/postgres: invalid config")
	// ErrInvalidTable is wrapped by the errors of New (with
	// ErrInvalidConfig), Schema and Migrate for a table name the library's
	// rule rejects: "name" or "schema.name" of lowercase letters, digits and
	// underscores. It is the same error in every postgres package of
	// steadfast.
	ErrInvalidTable = pgtable.ErrInvalidTable
)

//go:embed schema.sql
var schemaSQL string

const defaultIndex = "steadfast_idempotency_created_at_idx"

// indexSuffix is appended to the table name to name its index.
const indexSuffix = "_created_at_idx"

// table is a validated, quoted table name and its index name.
type table struct {
	name  pgtable.Name
	ident string // quoted, possibly schema-qualified
	index string // quoted, unqualified
}

// parseTable validates a table name ("" means DefaultTable) with the
// library's one table-name rule (internal/pgtable); the error wraps
// ErrInvalidTable.
func parseTable(name string) (table, error) {
	n, err := pgtable.Parse("idempotency/postgres", name, DefaultTable, len(indexSuffix))
	if err != nil {
		return table{}, err
	}
	return table{name: n, ident: n.Ident(), index: n.Derived(indexSuffix)}, nil
}

// Schema returns the SQL that creates the table (and its index) for a table
// name ("" means DefaultTable), for migration tools. It is idempotent (IF
// NOT EXISTS). The error wraps ErrInvalidTable.
func Schema(tableName string) (string, error) {
	t, err := parseTable(tableName)
	if err != nil {
		return "", err
	}
	return t.schema(), nil
}

func (t table) schema() string {
	return strings.NewReplacer(defaultIndex, t.index, DefaultTable, t.ident).Replace(schemaSQL)
}

// Migrate creates the table (and its index) if missing; "" means
// DefaultTable. It is idempotent and safe to run from several processes at
// once. The error wraps ErrInvalidTable for a bad name.
func Migrate(ctx context.Context, db DB, tableName string) error {
	t, err := parseTable(tableName)
	if err != nil {
		return err
	}
	// CREATE TABLE IF NOT EXISTS is not safe against itself: one
	// simple-protocol query runs the statements in one implicit
	// transaction, which holds the table's advisory lock to its end.
	sql := fmt.Sprintf("SELECT pg_advisory_xact_lock(%d, 0);\n%s", t.name.LockKey("steadfast.idempotency"), t.schema())
	if _, err := db.Exec(ctx, sql); err != nil {
		return fmt.Errorf("idempotency/postgres: migrate %s: %w", t.name, err)
	}
	return nil
}

// Config tunes a Store. The zero value is ready to use. Zero fields take
// their documented defaults; a negative value turns a setting off where its
// field says so, and is rejected elsewhere.
type Config struct {
	// Table holds the keys: "name" or "schema.name", each part a plain
	// lowercase identifier ([a-z_][a-z0-9_]*), the table name at most 48
	// bytes (its index name adds 15). Names are always quoted in SQL.
	// Default DefaultTable.
	Table string
	// Wait bounds how long a claim waits for a running transaction that
	// holds the same key (see the package doc): zero, the default, does not
	// wait and reports idempotency.ErrInProgress at once; negative waits as
	// long as ctx allows.
	Wait time.Duration
	// Retention is how long RunCleanup keeps a key. It must exceed your
	// broker's retry window, or a late redelivery is processed again.
	// Default DefaultRetention (7 days).
	Retention time.Duration
	// TxOptions are the options of the transactions the Store begins
	// (Handler, Acquire). Default: the server's default isolation (READ
	// COMMITTED unless configured otherwise).
	TxOptions pgx.TxOptions
	// Logger receives RunCleanup's failures. Default slog.Default().
	Logger *slog.Logger
}

// Store is the PostgreSQL idempotency.Store, safe for concurrent use. Create
// it with New.
type Store struct {
	pool *pgxpool.Pool
	cfg  Config
	t    table
	log  *slog.Logger

	waitMs     string // lock_timeout for a bounded wait, "" otherwise
	claimSQL   string
	restoreSQL string
	selectSQL  string
	updateSQL  string
	cleanupSQL string
}

var _ idempotency.Store = (*Store)(nil)

// New returns a Store using pool. It does not contact the database; call
// Migrate (or apply Schema) before use. Its errors wrap ErrInvalidConfig:
// a nil pool, a negative Retention, and a bad table name (which wraps
// ErrInvalidTable too).
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	t, err := parseTable(cfg.Table)
	if err != nil {
		return nil, invalidTable{err}
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("%w: negative Retention %v", ErrInvalidConfig, cfg.Retention)
	}
	cfg.Retention = cmp.Or(cfg.Retention, DefaultRetention)
	cfg.Logger = telemetry.Logger(cfg.Logger)
	s := &Store{pool: pool, cfg: cfg, t: t, log: cfg.Logger}

	// The advisory lock's first key is the table's OID (so tables, and the
	// same table name in different schemas, never share locks), the second
	// a hash of scope and key ($4).
	lockArgs := t.name.Literal() + `::regclass::oid::int4, $4::int4`
	var lock string
	switch {
	case cfg.Wait == 0:
		lock = `SELECT pg_try_advisory_xact_lock(` + lockArgs + `) AS ok`
	case cfg.Wait < 0:
		lock = `SELECT true AS ok FROM (SELECT pg_advisory_xact_lock(` + lockArgs + `)) locked`
	default:
		// Save the transaction's lock_timeout in a custom setting, set
		// ours, then lock, in that order: each step is a subquery feeding
		// the next, and a subquery with volatile functions in its target
		// list is never flattened into its parent. restoreSQL, queued right
		// after in the same round trip, puts the saved value back.
		s.waitMs = strconv.FormatInt(max(1, cfg.Wait.Milliseconds()), 10)
		lock = `SELECT true AS ok FROM (SELECT pg_advisory_xact_lock(` + lockArgs + `) FROM (
    SELECT set_config('lock_timeout', $5, true) FROM (
      SELECT set_config('steadfast.saved_lock_timeout', current_setting('lock_timeout'), true)) saved) bounded) locked`
		s.restoreSQL = `SELECT set_config('lock_timeout', current_setting('steadfast.saved_lock_timeout'), true)`
	}
	// One statement: lock, then insert if locked; report both. The insert
	// never waits on the row: whoever holds an uncommitted row for the key
	// holds its lock too.
	s.claimSQL = `WITH l AS MATERIALIZED (` + lock + `),
ins AS (
  INSERT INTO ` + t.ident + ` (scope, key, fingerprint)
  SELECT $1::text, $2::text, $3::bytea FROM l WHERE l.ok
  ON CONFLICT (scope, key) DO NOTHING RETURNING 1)
SELECT l.ok, EXISTS (SELECT 1 FROM ins) FROM l`
	s.selectSQL = `SELECT fingerprint, response FROM ` + t.ident + ` WHERE scope = $1 AND key = $2`
	s.updateSQL = `UPDATE ` + t.ident + ` SET response = $3 WHERE scope = $1 AND key = $2`
	s.cleanupSQL = `DELETE FROM ` + t.ident + ` WHERE ctid = ANY (ARRAY(SELECT ctid FROM ` + t.ident + ` WHERE created_at < $1 LIMIT $2))`
	return s, nil
}

// Table returns the table name the store uses.
func (s *Store) Table() string { return s.t.name.String() }

// Migrate creates the store's table if missing, on the store's pool. See
// the package-level Migrate.
func (s *Store) Migrate(ctx context.Context) error { return Migrate(ctx, s.pool, s.t.name.String()) }

// Claim claims key in scope inside the caller's transaction tx. It returns
// true when the key was free: it is now claimed, and becomes done when tx
// commits (or free again when tx rolls back). It returns false when a
// committed transaction claimed the key before: skip the work (and roll tx
// back or commit it; nothing was written).
//
// When another transaction claimed the key and has not ended, Claim returns
// an error wrapping idempotency.ErrInProgress: at once by default, leaving
// tx usable; after Config.Wait, aborting tx, when Wait is positive (see the
// package doc). Claim leaves the transaction's lock_timeout as it found it.
// A bad key returns idempotency.ErrInvalidKey before touching tx.
//
// Given a pool or a connection outside a transaction, the claim commits at
// once and means "done".
//
// Each claim holds one entry of the server's shared lock table until its
// transaction ends; a transaction that claims thousands of keys needs
// max_locks_per_transaction sized for it.
func (s *Store) Claim(ctx context.Context, tx DB, scope, key string) (bool, error) {
	if err := idempotency.CheckKey(scope, key); err != nil {
		return false, err
	}
	claimed, _, err := s.claim(ctx, tx, scope, key, nil, false)
	return claimed, err
}

// lockKey hashes scope and key (FNV-1a) into the advisory lock's second key.
func lockKey(scope, key string) int32 {
	h := uint32(2166136261)
	for i := 0; i < len(scope); i++ {
		h = (h ^ uint32(scope[i])) * 16777619
	}
	h = (h ^ 0) * 16777619 // separator: scope and key are NUL-free
	for i := 0; i < len(key); i++ {
		h = (h ^ uint32(key[i])) * 16777619
	}
	return int32(h)
}

// claim runs the claim; with read set it also reads the key's row in the
// same round trip (which, when the key was done, is the committed record).
func (s *Store) claim(ctx context.Context, tx DB, scope, key string, fp []byte, read bool) (claimed bool, rec *idempotency.Record, err error) {
	b := &pgx.Batch{}
	if s.waitMs != "" {
		b.Queue(s.claimSQL, scope, key, fp, lockKey(scope, key), s.waitMs)
		b.Queue(s.restoreSQL)
	} else {
		b.Queue(s.claimSQL, scope, key, fp, lockKey(scope, key))
	}
	if read {
		b.Queue(s.selectSQL, scope, key)
	}
	br := tx.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			err = s.claimErr(scope, key, cerr)
		}
	}()
	var locked bool
	if err := br.QueryRow().Scan(&locked, &claimed); err != nil {
		return false, nil, s.claimErr(scope, key, err)
	}
	if s.waitMs != "" {
		if _, err := br.Exec(); err != nil {
			return false, nil, s.claimErr(scope, key, err)
		}
	}
	if read && locked && !claimed {
		var r idempotency.Record
		switch err := br.QueryRow().Scan(&r.Fingerprint, &r.Response); {
		case errors.Is(err, pgx.ErrNoRows):
			// Deleted by cleanup between the claim and the read.
		case err != nil:
			return false, nil, s.claimErr(scope, key, err)
		default:
			rec = &r
		}
	}
	if !locked {
		return false, nil, fmt.Errorf("idempotency/postgres: claim scope %q key %q: %w", scope, key, idempotency.ErrInProgress)
	}
	return claimed, rec, nil
}

// SQLSTATEs that mean "another transaction has this key right now".
var inProgressCodes = map[string]bool{
	"55P03": true, // lock_not_available: Config.Wait expired
	"40001": true, // serialization_failure: committed concurrently (REPEATABLE READ, SERIALIZABLE)
	"40P01": true, // deadlock_detected: two transactions claiming keys in opposite order
}

func (s *Store) claimErr(scope, key string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && inProgressCodes[pgErr.Code] {
		return fmt.Errorf("idempotency/postgres: claim scope %q key %q: %w (%w)", scope, key, idempotency.ErrInProgress, err)
	}
	return fmt.Errorf("idempotency/postgres: claim scope %q key %q in %s: %w", scope, key, s.t.name, err)
}

// Acquire implements idempotency.Store. A lease is an open transaction
// (holding one pool connection) in which the key is claimed: Complete
// commits it (storing the response), Release rolls it back. If the process
// dies, the database rolls the transaction back when the connection drops,
// freeing the key. Work done outside that transaction is not atomic with the
// claim; use Handler or Claim to put the effect in it.
//
// A concurrent Acquire of the held key returns ErrInProgress, at once or
// after Config.Wait (see the package doc).
func (s *Store) Acquire(ctx context.Context, scope, key string, fingerprint []byte) (idempotency.Lease, *idempotency.Record, error) {
	if err := idempotency.CheckKey(scope, key); err != nil {
		return nil, nil, err
	}
	for {
		tx, err := s.pool.BeginTx(ctx, s.cfg.TxOptions)
		if err != nil {
			return nil, nil, fmt.Errorf("idempotency/postgres: acquire scope %q key %q: begin: %w", scope, key, err)
		}
		claimed, rec, err := s.claim(ctx, tx, scope, key, fingerprint, true)
		if err == nil && claimed {
			return &lease{s: s, tx: tx, scope: scope, key: key}, nil, nil
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_ = tx.Rollback(rctx)
		cancel()
		switch {
		case err != nil:
			return nil, nil, err
		case rec != nil:
			return nil, rec, nil
		}
		// The row was deleted between the insert and the read: claim again.
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
	}
}

type lease struct {
	s          *Store
	tx         pgx.Tx
	scope, key string
}

func (l *lease) Complete(ctx context.Context, response []byte) error {
	if response != nil {
		if _, err := l.tx.Exec(ctx, l.s.updateSQL, l.scope, l.key, response); err != nil {
			// The transaction cannot commit any more: the claim is gone
			// with it, whatever the cause.
			_ = l.tx.Rollback(ctx)
			return l.lost("complete", err)
		}
	}
	if err := l.tx.Commit(ctx); err != nil {
		if commitNeverRan(err) {
			return l.lost("complete", err)
		}
		return fmt.Errorf("idempotency/postgres: complete scope %q key %q: outcome unknown (the key may be done): %w", l.scope, l.key, err)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	// A rollback that fails found the transaction already ended, or its
	// connection gone (which ends it): the key is free either way, and the
	// lease was lost before this call.
	if err := l.tx.Rollback(ctx); err != nil {
		return l.lost("release", err)
	}
	return nil
}

// lost is the error of a lease whose transaction ended without marking the
// key done: it wraps idempotency.ErrLeaseLost and the cause.
func (l *lease) lost(op string, err error) error {
	return fmt.Errorf("idempotency/postgres: %s scope %q key %q: %w (%w)", op, l.scope, l.key, idempotency.ErrLeaseLost, err)
}

// commitNeverRan reports whether a failed COMMIT surely did not commit: the
// transaction had already ended (pgx.ErrTxClosed), the server rolled it back
// (pgx.ErrTxCommitRollback), the server refused it with an error (it
// terminated the session, or the transaction was aborted), or the statement
// was never sent. A connection that broke after COMMIT was sent is
// ambiguous: the server may have committed.
func commitNeverRan(err error) bool {
	var pgErr *pgconn.PgError
	return errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, pgx.ErrTxCommitRollback) ||
		errors.As(err, &pgErr) || pgconn.SafeToRetry(err)
}

// cleanupBatch is how many rows one Cleanup statement deletes, so that no
// statement holds many row locks or runs long.
const cleanupBatch = 5000

// Cleanup deletes the keys claimed before the given time, in batches, and
// returns how many it deleted. A redelivery of a deleted key is processed
// again.
func (s *Store) Cleanup(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, s.cleanupSQL, before, cleanupBatch)
		if err != nil {
			return total, fmt.Errorf("idempotency/postgres: cleanup %s: %w", s.t.name, err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < cleanupBatch {
			return total, nil
		}
	}
}

// RunCleanup deletes keys older than Config.Retention now and then every
// interval, until ctx is done; then it returns nil. A failed round is logged
// and retried at the next interval. One process running it is enough;
// several are harmless.
func (s *Store) RunCleanup(ctx context.Context, every time.Duration) error {
	if every <= 0 {
		return fmt.Errorf("idempotency/postgres: RunCleanup interval %v must be positive", every)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := s.Cleanup(ctx, time.Now().Add(-s.cfg.Retention))
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			s.log.WarnContext(ctx, "idempotency: cleanup failed", "table", s.t.name, "error", err)
		case n > 0:
			s.log.DebugContext(ctx, "idempotency: cleanup", "table", s.t.name, "deleted", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// invalidTable is a table-name error of pgtable.Parse (which names the
// package and wraps ErrInvalidTable) that also matches ErrInvalidConfig.
type invalidTable struct{ err error }

func (e invalidTable) Error() string   { return e.err.Error() }
func (e invalidTable) Unwrap() []error { return []error{e.err, ErrInvalidConfig} }
