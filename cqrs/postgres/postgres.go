package postgres

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
	"github.com/steadfast-go/steadfast/internal/pgtable"
)

//go:embed schema.sql
var schemaTemplate string

// DefaultTable is the checkpoints table when Config.Table is empty.
const DefaultTable = "cqrs_checkpoints"

// ErrInvalidTable is wrapped by errors about table names.
var ErrInvalidTable = pgtable.ErrInvalidTable

// DB is what Migrate needs: pgx.Tx, *pgxpool.Pool and *pgx.Conn satisfy it.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Config tunes a Store. The zero value uses the table "cqrs_checkpoints"
// (and its companions "cqrs_checkpoints_names", "cqrs_checkpoints_skipped")
// in the connection's search path.
type Config struct {
	// Table is the checkpoints table, "name" or "schema.name". Default
	// DefaultTable.
	Table string
}

// Store keeps projection checkpoints in PostgreSQL, applies each batch in a
// transaction with its checkpoint, and leases each projection version to
// one instance with a session advisory lock. See the package doc.
type Store struct {
	pool *pgxpool.Pool
	t    tables
	// nextPrune is when ApplyOnce next deletes expired IDs (unix nanos).
	nextPrune atomic.Int64
}

var (
	_ cqrs.Store[Tx]     = (*Store)(nil)
	_ cqrs.OnceStore[Tx] = (*Store)(nil)
)

type tables struct {
	name                                 pgtable.Name
	checkpoints, names, skipped, applied string
	schema                               string
	lock                                 int32
	stateSQL, applySQL, commitSQL        string
	onceSQL, onceCommitSQL, pruneSQL     string
}

func parseTables(table string) (tables, error) {
	n, err := pgtable.Parse("cqrs/postgres", table, DefaultTable, len("_skipped_pkey"))
	if err != nil {
		return tables{}, fmt.Errorf("%w: %w", cqrs.ErrInvalidConfig, err)
	}
	t := tables{name: n, checkpoints: n.Ident(), names: n.Sibling("_names"), skipped: n.Sibling("_skipped"),
		applied: n.Sibling("_applied"), lock: n.LockKey("steadfast.cqrs")}
	t.schema = strings.NewReplacer(
		"{checkpoints}", t.checkpoints,
		"{checkpoints_pkey}", n.Derived("_pkey"),
		"{names}", t.names,
		"{names_pkey}", n.Derived("_names_pkey"),
		"{skipped}", t.skipped,
		"{skipped_pkey}", n.Derived("_skipped_pkey"),
		"{applied}", n.Sibling("_applied"),
		"{applied_pkey}", n.Derived("_applied_pkey"),
		"{applied_expires}", n.Derived("_applied_exp"),
	).Replace(schemaTemplate)
	t.stateSQL = `SELECT c.transaction_id, c.sequence, c.status, c.error, c.attempts, c.events, c.skipped, c.owner, c.updated_at,
coalesce(n.active = c.version, false)
FROM ` + t.checkpoints + ` c LEFT JOIN ` + t.names + ` n ON n.name = c.name WHERE c.name = $1 AND c.version = $2`
	// Locks the version's row and the name's (the side-effects
	// checkpoint), and reads both.
	t.applySQL = `SELECT c.transaction_id, c.sequence, n.effects_transaction, n.effects_sequence
FROM ` + t.checkpoints + ` c JOIN ` + t.names + ` n ON n.name = c.name WHERE c.name = $1 AND c.version = $2 FOR UPDATE`
	t.commitSQL = `WITH c AS (
  UPDATE ` + t.checkpoints + ` SET transaction_id = $3, sequence = $4, status = 'running', error = '', attempts = 0,
    events = events + $5, skipped = skipped + cardinality($7::bigint[]), updated_at = now()
  WHERE name = $1 AND version = $2),
n AS (
  UPDATE ` + t.names + ` SET effects_transaction = $3, effects_sequence = $4
  WHERE name = $1 AND $6 AND (effects_transaction, effects_sequence) < ($3::bigint, $4::bigint))
INSERT INTO ` + t.skipped + ` (name, version, transaction_id, sequence, event_id, stream_id, stream_version, type, error)
SELECT $1, $2, u.t, u.s, u.id, u.st, u.v, u.ty, u.e
FROM unnest($7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::text[]) AS u(t, s, id, st, v, ty, e)
ON CONFLICT DO NOTHING`
	// Records the IDs (sorted, so two transactions wait on each other
	// instead of deadlocking) and returns those not recorded before, or
	// recorded but expired.
	t.onceSQL = `INSERT INTO ` + t.applied + ` AS a (name, version, event_id, expires_at)
SELECT $1, $2, u.id, now() + $4 * interval '1 millisecond' FROM unnest($3::text[]) AS u(id) ORDER BY u.id
ON CONFLICT (name, version, event_id) DO UPDATE SET expires_at = excluded.expires_at WHERE a.expires_at < now()
RETURNING event_id`
	t.onceCommitSQL = `WITH c AS (
  INSERT INTO ` + t.checkpoints + ` AS c (name, version, events, skipped) VALUES ($1, $2, $3, cardinality($4::bigint[]))
  ON CONFLICT (name, version) DO UPDATE SET status = 'running', error = '', attempts = 0,
    events = c.events + excluded.events, skipped = c.skipped + excluded.skipped, updated_at = now())
INSERT INTO ` + t.skipped + ` (name, version, transaction_id, sequence, event_id, stream_id, stream_version, type, error)
SELECT $1, $2, u.t, u.s, u.id, u.st, u.v, u.ty, u.e
FROM unnest($4::bigint[], $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[]) AS u(t, s, id, st, v, ty, e)
ON CONFLICT DO NOTHING`
	t.pruneSQL = `DELETE FROM ` + t.applied + ` WHERE ctid = ANY (ARRAY(
SELECT ctid FROM ` + t.applied + ` WHERE expires_at < now() LIMIT 10000))`
	return t, nil
}

// New returns a store on pool. Call Migrate (or apply Schema) once before
// use.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("cqrs/postgres: %w: nil pool", cqrs.ErrInvalidConfig)
	}
	t, err := parseTables(cfg.Table)
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, t: t}, nil
}

// Schema returns the DDL of the tables for table ("" means DefaultTable),
// for migration tools.
func Schema(table string) (string, error) {
	t, err := parseTables(table)
	if err != nil {
		return "", err
	}
	return t.schema, nil
}

// Schema returns the store's DDL.
func (s *Store) Schema() string { return s.t.schema }

// Table returns the checkpoints table, quoted.
func (s *Store) Table() string { return s.t.checkpoints }

// Migrate creates the store's tables if they do not exist.
func (s *Store) Migrate(ctx context.Context) error { return Migrate(ctx, s.pool, s.t.name.String()) }

// Migrate creates the tables of table ("" means DefaultTable) if they do
// not exist, serialized by an advisory lock, in one implicit transaction.
func Migrate(ctx context.Context, db DB, table string) error {
	t, err := parseTables(table)
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d);\n%s", t.lock, t.schema)); err != nil {
		return fmt.Errorf("cqrs/postgres: migrate %s: %w", t.checkpoints, err)
	}
	return nil
}

// VersionTable returns the quoted name of version's table for the read
// model table base ("name" or "schema.name"): base_v<version>. A swap
// (Store.Activate) points the view base at it.
func VersionTable(base string, version int) (string, error) {
	n, err := pgtable.Parse("cqrs/postgres", base, "", len("_v")+10)
	if err != nil {
		return "", fmt.Errorf("%w: %w", cqrs.ErrInvalidConfig, err)
	}
	return n.Sibling("_v" + strconv.Itoa(version)), nil
}

// Tx is what a projection's handler writes through: the batch's
// transaction (pgx.Tx) on the connection that holds the lease. Do not
// commit or roll it back.
type Tx struct {
	pgx.Tx
	id cqrs.ID
}

// Projection returns the version the batch belongs to.
func (tx Tx) Projection() cqrs.ID { return tx.id }

// Table returns the quoted name of this version's table for the read model
// table base (see VersionTable). A bad name panics: it is a programming
// error in the handler, caught the first time it runs; check names up front
// with VersionTable.
func (tx Tx) Table(base string) string {
	n, err := VersionTable(base, tx.id.Version)
	if err != nil {
		panic(err)
	}
	return n
}

func lockKey(id cqrs.ID) int32 {
	h := fnv.New32a()
	h.Write([]byte(id.Name + "@" + strconv.Itoa(id.Version)))
	return int32(h.Sum32())
}

func wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("cqrs/postgres: %s: %w: %w", op, ctx.Err(), err)
	}
	return fmt.Errorf("cqrs/postgres: %s: %w", op, err)
}

// Acquire implements cqrs.Store. The lease is a session advisory lock held
// by a connection taken from the pool for as long as the lease lasts; every
// batch runs in a transaction on that connection, so no batch commits
// without the lock. When the holder dies, PostgreSQL ends its session and
// frees the lock at once; the next standby's Acquire (every
// cqrs.Config.TakeoverInterval) takes it.
func (s *Store) Acquire(ctx context.Context, id cqrs.ID, owner string) (cqrs.Lease[Tx], error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, wrap(ctx, "acquire "+id.String(), err)
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, s.t.lock, lockKey(id)).Scan(&ok); err != nil {
		conn.Release()
		return nil, wrap(ctx, "lock "+id.String(), err)
	}
	if !ok {
		conn.Release()
		return nil, fmt.Errorf("cqrs/postgres: %w: %s", cqrs.ErrLocked, id)
	}
	l := &lease{s: s, conn: conn, id: id}
	_, err = conn.Exec(ctx, `WITH n AS (INSERT INTO `+s.t.names+` (name) VALUES ($1) ON CONFLICT DO NOTHING)
INSERT INTO `+s.t.checkpoints+` (name, version, owner) VALUES ($1, $2, $3)
ON CONFLICT (name, version) DO UPDATE SET owner = excluded.owner`, id.Name, id.Version, owner)
	if err != nil {
		_ = l.Release(context.WithoutCancel(ctx))
		return nil, wrap(ctx, "register "+id.String(), err)
	}
	return l, nil
}

type lease struct {
	s    *Store
	conn *pgxpool.Conn
	id   cqrs.ID
}

// lost classifies an error on the lease's connection: a closed connection
// took the lock with it.
func (l *lease) lost(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if l.conn.Conn().IsClosed() && ctx.Err() == nil {
		return fmt.Errorf("cqrs/postgres: %s %s: %w: %w", op, l.id, cqrs.ErrLeaseLost, err)
	}
	return wrap(ctx, op+" "+l.id.String(), err)
}

func (l *lease) State(ctx context.Context) (cqrs.State, error) {
	st, err := l.s.state(ctx, l.conn, l.id)
	return st, l.lost(ctx, "state", err)
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func (s *Store) state(ctx context.Context, q querier, id cqrs.ID) (cqrs.State, error) {
	st := cqrs.State{ID: id}
	var tx int64
	var status string
	err := q.QueryRow(ctx, s.t.stateSQL, id.Name, id.Version).Scan(&tx, &st.Checkpoint.Sequence, &status, &st.Error,
		&st.Attempts, &st.Events, &st.Skipped, &st.Owner, &st.Updated, &st.Active)
	if errors.Is(err, pgx.ErrNoRows) {
		return cqrs.State{}, fmt.Errorf("cqrs/postgres: %w: %s", cqrs.ErrNotFound, id)
	}
	st.Checkpoint.Transaction, st.Status = uint64(tx), cqrs.Status(status)
	return st, err
}

func (l *lease) Apply(ctx context.Context, c cqrs.Commit, fn func(context.Context, Tx, eventsource.Position) error) error {
	tx, err := l.conn.Begin(ctx)
	if err != nil {
		return l.lost(ctx, "begin", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var at, live eventsource.Position
	var atTx, liveTx int64
	if err := tx.QueryRow(ctx, l.s.t.applySQL, l.id.Name, l.id.Version).Scan(&atTx, &at.Sequence, &liveTx, &live.Sequence); err != nil {
		return l.lost(ctx, "lock checkpoint", err)
	}
	at.Transaction, live.Transaction = uint64(atTx), uint64(liveTx)
	if at != c.From {
		return fmt.Errorf("cqrs/postgres: %w: %s: stored %s, batch from %s", cqrs.ErrCheckpointConflict, l.id, at, c.From)
	}
	if fn != nil {
		if err := fn(ctx, Tx{Tx: tx, id: l.id}, live); err != nil {
			if l.conn.Conn().IsClosed() && ctx.Err() == nil {
				return fmt.Errorf("cqrs/postgres: apply %s: %w: %w", l.id, cqrs.ErrLeaseLost, err)
			}
			return err
		}
	}
	n := len(c.Skipped)
	kt, ks, kid, kst, kv, kty, ke := make([]int64, n), make([]int64, n), make([]string, n), make([]string, n), make([]int64, n), make([]string, n), make([]string, n)
	for i, k := range c.Skipped {
		kt[i], ks[i], kid[i], kst[i], kv[i], kty[i], ke[i] = int64(k.Position.Transaction), k.Position.Sequence, k.EventID, k.StreamID, k.Version, k.Type, k.Error
	}
	if _, err := tx.Exec(ctx, l.s.t.commitSQL, l.id.Name, l.id.Version, int64(c.To.Transaction), c.To.Sequence, c.Events,
		c.Events > 0, kt, ks, kid, kst, kv, kty, ke); err != nil {
		return l.lost(ctx, "write checkpoint", err)
	}
	if err := fault.At(ctx, "cqrs/postgres.commit", c); err != nil {
		return err
	}
	return l.lost(ctx, "commit", tx.Commit(ctx))
}

func (l *lease) Fail(ctx context.Context, at eventsource.Position, status cqrs.Status, attempts int, msg string) error {
	tag, err := l.conn.Exec(ctx, `UPDATE `+l.s.t.checkpoints+` SET status = $3, attempts = $4, error = $5, updated_at = now()
WHERE name = $1 AND version = $2 AND transaction_id = $6 AND sequence = $7`,
		l.id.Name, l.id.Version, string(status), attempts, msg, int64(at.Transaction), at.Sequence)
	if err != nil {
		return l.lost(ctx, "record failure", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("cqrs/postgres: %w: %s: failure at %s is not the stored checkpoint", cqrs.ErrCheckpointConflict, l.id, at)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	if l.conn == nil {
		return nil
	}
	conn := l.conn
	l.conn = nil
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, l.s.t.lock, lockKey(l.id))
	if err != nil {
		// The lock must not outlive the lease: end the session.
		_ = conn.Conn().Close(ctx)
	}
	conn.Release()
	return wrap(ctx, "release "+l.id.String(), err)
}

// State implements cqrs.StateReader.
func (s *Store) State(ctx context.Context, id cqrs.ID) (cqrs.State, error) {
	st, err := s.state(ctx, s.pool, id)
	if errors.Is(err, cqrs.ErrNotFound) {
		return st, err
	}
	return st, wrap(ctx, "state "+id.String(), err)
}

// ActiveVersion implements cqrs.StateReader.
func (s *Store) ActiveVersion(ctx context.Context, name string) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, `SELECT active FROM `+s.t.names+` WHERE name = $1`, name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return v, wrap(ctx, "active version of "+name, err)
}

// Activate implements cqrs.Store: in one transaction it checks that id has
// reached the serving version's checkpoint, points each view at id's table
// (CREATE OR REPLACE VIEW view AS SELECT * FROM view_v<version>; the
// version's table must have the view's columns, in order, possibly with
// more at the end) and records id as the serving version. Queries running
// on a view finish on the old table; the next ones read the new one: no
// reader sees an empty or half-built read model.
func (s *Store) Activate(ctx context.Context, id cqrs.ID, views []string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	type view struct{ name, table string }
	vs := make([]view, len(views))
	for i, v := range views {
		n, err := pgtable.Parse("cqrs/postgres", v, "", len("_v")+10)
		if err != nil {
			return fmt.Errorf("%w: %w", cqrs.ErrInvalidConfig, err)
		}
		vs[i] = view{n.Ident(), n.Sibling("_v" + strconv.Itoa(id.Version))}
	}
	return wrap(ctx, "activate "+id.String(), pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO `+s.t.names+` (name) VALUES ($1) ON CONFLICT DO NOTHING`, id.Name); err != nil {
			return err
		}
		var active int
		if err := tx.QueryRow(ctx, `SELECT active FROM `+s.t.names+` WHERE name = $1 FOR UPDATE`, id.Name).Scan(&active); err != nil {
			return err
		}
		var behind bool
		err := tx.QueryRow(ctx, `SELECT coalesce((n.transaction_id, n.sequence) < (o.transaction_id, o.sequence), false)
FROM `+s.t.checkpoints+` n LEFT JOIN `+s.t.checkpoints+` o ON o.name = n.name AND o.version = $3
WHERE n.name = $1 AND n.version = $2`, id.Name, id.Version, active).Scan(&behind)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", cqrs.ErrNotFound, id)
		}
		if err != nil {
			return err
		}
		if behind && active != id.Version {
			return fmt.Errorf("%w: %s is behind version %d", cqrs.ErrNotCaughtUp, id, active)
		}
		for _, v := range vs {
			if _, err := tx.Exec(ctx, `CREATE OR REPLACE VIEW `+v.name+` AS SELECT * FROM `+v.table); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE `+s.t.names+` SET active = $2 WHERE name = $1`, id.Name, id.Version)
		return err
	}))
}

// Reset implements cqrs.Store.
func (s *Store) Reset(ctx context.Context, id cqrs.ID) error {
	tag, err := s.pool.Exec(ctx, `UPDATE `+s.t.checkpoints+` SET status = 'running', error = '', attempts = 0, updated_at = now()
WHERE name = $1 AND version = $2`, id.Name, id.Version)
	if err != nil {
		return wrap(ctx, "reset "+id.String(), err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("cqrs/postgres: %w: %s", cqrs.ErrNotFound, id)
	}
	return nil
}

// States returns the state of every projection version, by name and
// version.
func (s *Store) States(ctx context.Context) ([]cqrs.State, error) {
	rows, err := s.pool.Query(ctx, `SELECT c.name, c.version, c.transaction_id, c.sequence, c.status, c.error, c.attempts, c.events,
c.skipped, c.owner, c.updated_at, coalesce(n.active = c.version, false)
FROM `+s.t.checkpoints+` c LEFT JOIN `+s.t.names+` n ON n.name = c.name ORDER BY c.name, c.version`)
	if err != nil {
		return nil, wrap(ctx, "list states", err)
	}
	defer rows.Close()
	var out []cqrs.State
	for rows.Next() {
		var st cqrs.State
		var tx int64
		var status string
		if err := rows.Scan(&st.ID.Name, &st.ID.Version, &tx, &st.Checkpoint.Sequence, &status, &st.Error, &st.Attempts,
			&st.Events, &st.Skipped, &st.Owner, &st.Updated, &st.Active); err != nil {
			return nil, wrap(ctx, "list states", err)
		}
		st.Checkpoint.Transaction, st.Status = uint64(tx), cqrs.Status(status)
		out = append(out, st)
	}
	return out, wrap(ctx, "list states", rows.Err())
}

// Skipped returns up to limit events version id skipped, in log order.
func (s *Store) Skipped(ctx context.Context, id cqrs.ID, limit int) ([]cqrs.SkippedEvent, error) {
	rows, err := s.pool.Query(ctx, `SELECT transaction_id, sequence, event_id, stream_id, stream_version, type, error
FROM `+s.t.skipped+` WHERE name = $1 AND version = $2 ORDER BY transaction_id, sequence LIMIT $3`, id.Name, id.Version, limit)
	if err != nil {
		return nil, wrap(ctx, "list skipped", err)
	}
	defer rows.Close()
	var out []cqrs.SkippedEvent
	for rows.Next() {
		var k cqrs.SkippedEvent
		var tx int64
		if err := rows.Scan(&tx, &k.Position.Sequence, &k.EventID, &k.StreamID, &k.Version, &k.Type, &k.Error); err != nil {
			return nil, wrap(ctx, "list skipped", err)
		}
		k.Position.Transaction = uint64(tx)
		out = append(out, k)
	}
	return out, wrap(ctx, "list skipped", rows.Err())
}

// Head reads the newest sequence number the event store of table
// ("" means the eventsource/postgres default) assigned: a cqrs.HeadReader
// for the lag in events.
type Head struct {
	pool *pgxpool.Pool
	seq  string
}

// NewHead returns the HeadReader of the events table (as given to
// eventsource/postgres.Config.Table).
func NewHead(pool *pgxpool.Pool, eventsTable string) (*Head, error) {
	n, err := pgtable.Parse("cqrs/postgres", eventsTable, "events", len("_seq"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", cqrs.ErrInvalidConfig, err)
	}
	return &Head{pool: pool, seq: n.Sibling("_seq")}, nil
}

// Head implements cqrs.HeadReader.
func (h *Head) Head(ctx context.Context) (int64, error) {
	var v int64
	var called bool
	if err := h.pool.QueryRow(ctx, `SELECT last_value, is_called FROM `+h.seq).Scan(&v, &called); err != nil {
		return 0, wrap(ctx, "read log head", err)
	}
	if !called {
		return 0, nil
	}
	return v, nil
}
