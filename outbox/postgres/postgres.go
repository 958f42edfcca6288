package postgres

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/propagation"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	"github.com/steadfast-go/steadfast/outbox"
)

//go:embed schema.sql
var schemaTemplate string

// Sentinel errors.
var (
	// ErrInvalidConfig is returned by New for a bad table or channel name
	// or a negative setting.
	ErrInvalidConfig = errors.New("outbox/postgres: invalid config")
	// ErrInvalidTable is wrapped, with ErrInvalidConfig, by the errors of
	// New, Schema and Migrate for a table name the library's rule rejects.
	// It is the same error in every postgres package of steadfast.
	ErrInvalidTable = pgtable.ErrInvalidTable
)

// DB is what Enqueue needs to write rows: pgx.Tx, *pgxpool.Pool and
// *pgx.Conn all satisfy it. Pass the transaction that writes your business
// rows so that the message commits, or rolls back, with them.
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

// Defaults for Config fields left zero.
const (
	DefaultTable        = "outbox"
	DefaultClaimTimeout = 2 * time.Minute
	// DefaultNotifyInterval is the default Config.NotifyInterval.
	DefaultNotifyInterval = 20 * time.Millisecond
	// MinClaimTimeout is the shortest ClaimTimeout New accepts. The server
	// counts a claim's idle time from the end of each of the claim's own
	// round trips, so a timeout near the length of one round trip on a
	// loaded machine would end claims before the relay could use them.
	MinClaimTimeout = time.Second
)

// Config describes an outbox table. The zero value uses a table named
// "outbox" on the connection's search_path. Zero fields take their
// documented defaults; a negative value turns a setting off where its field
// says so, and is rejected elsewhere.
type Config struct {
	// Table is the outbox table, "name" or "schema.name". Each part is a
	// plain lowercase identifier ([a-z_][a-z0-9_]*); the schema is at most
	// 63 bytes and the table name at most 50 (its index names add up to 13).
	// Names are always quoted in SQL. Default DefaultTable ("outbox").
	Table string
	// Channel is the LISTEN/NOTIFY channel that wakes relays. Default: the
	// Table string as given (shortened with a hash when longer than 63
	// bytes). Channels are per database; two outbox tables sharing one only
	// cause spurious wake-ups.
	Channel string
	// DisableNotify stops Enqueue from sending a notification. Relays then
	// find new rows by polling only.
	DisableNotify bool
	// NotifyInTransaction sends Enqueue's notification from the caller's
	// transaction (pg_notify, delivered by its commit), so relays wake
	// exactly when the rows become visible. The price: PostgreSQL
	// serializes the commits of notifying transactions (each holds a
	// database-wide lock from before its commit record is flushed until it
	// ends), so concurrent business transactions that enqueue no longer
	// share WAL flushes and commit one at a time: with 8 concurrent
	// writers this has cost the business transactions up to about 40% of
	// their throughput.
	//
	// By default (false) the notification is sent outside the caller's
	// transaction: Enqueue hands it to the store, which sends it right away
	// on a connection of its pool, at most one per NotifyInterval (an
	// Enqueue during that time is covered by one more notification at its
	// end). It may reach a relay before the caller commits; the relay then
	// finds the rows by adaptive polling (outbox.Config.MinPollInterval:
	// after 1, 2, 4... ms), so a row is published within about twice the
	// time its transaction stayed open after Enqueue. Calling Enqueue last
	// in a transaction keeps that short. Business commits are never
	// serialized by the outbox.
	NotifyInTransaction bool
	// NotifyInterval is the least time between two notifications of one
	// Store when NotifyInTransaction is false: under a steady stream of
	// Enqueue calls the store sends one per interval (an idle store sends
	// the first at once), and a relay kept busy by the stream finds rows by
	// its adaptive polling anyway. Each notification is a small transaction
	// of its own that PostgreSQL commits with a WAL flush, so the interval
	// bounds that cost (50 per second at the default). Default
	// DefaultNotifyInterval (20ms).
	NotifyInterval time.Duration
	// LockKeys makes Enqueue take a transaction-scoped advisory lock on each
	// message key, held until the enqueueing transaction ends, so that
	// transactions enqueueing for the same key are serialized and the key's
	// rows get IDs, and are published, in commit order. Without it, rows of
	// one key from transactions that are not otherwise serialized (by a lock
	// on the business row, typically) are published in ID order, which may
	// differ from commit order. Cost: one lock per distinct key per
	// transaction (from the server's shared lock table, sized by
	// max_locks_per_transaction), and writers of one key wait for each
	// other.
	LockKeys bool
	// MaxMessageBytes is the size limit Enqueue enforces (broker.Message
	// Size). Default broker.DefaultMaxMessageBytes, every steadfast
	// publisher's default, so a message Enqueue accepts is one the relay's
	// publisher accepts; if you change the publisher's limit, give the
	// store the same (the relay warns when the store's is larger).
	MaxMessageBytes int
	// ClaimTimeout bounds how long a relay may hold a claim (the
	// transaction that locks a batch) idle; PostgreSQL ends the session after
	// it (idle_in_transaction_session_timeout), releasing the rows to other
	// relays; the claim's Complete then fails, so rows it published are
	// published again. Claims report this deadline (outbox.ClaimDeadline) and
	// the relay stops publishing a claim's rows in time to complete it,
	// leaving the rest for a later claim. It must exceed the relay's
	// PublishTimeout, with room to spare: a batch whose Publish fails as a
	// whole is then published one row at a time, each call started only if
	// PublishTimeout fits before the deadline (nothing checks this: the store
	// does not know the relay's settings). At least MinClaimTimeout (1s).
	// The server counts whole milliseconds: it is rounded up, and capped at
	// about 24.8 days. Default DefaultClaimTimeout (2m).
	ClaimTimeout time.Duration
	// Propagator injects the trace context of Enqueue's ctx into message
	// headers that do not carry one yet. Default: the W3C trace context
	// (traceparent, tracestate), as every steadfast publisher writes it.
	Propagator propagation.TextMapPropagator
}

// Store is an outbox on a PostgreSQL table. It implements outbox.Store and
// outbox.Notifier, and writes rows with Enqueue. It is safe for concurrent
// use.
type Store struct {
	pool    *pgxpool.Pool
	cfg     Config
	t       table
	sql     statements
	enqueue string  // sql.enqueue or a variant, per LockKeys and NotifyInTransaction
	nudge   *nudger // nil unless Enqueue notifies outside the transaction
}

var _ outbox.Store = (*Store)(nil)
var _ outbox.Notifier = (*Store)(nil)

// New returns a store for the table cfg describes. pool serves the relay's
// claims, housekeeping and LISTEN connection; Enqueue writes through the DB
// you give it. New does not touch the database: call Migrate (or apply
// Schema with your migration tool) before use.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	if cfg.MaxMessageBytes < 0 || cfg.ClaimTimeout < 0 || cfg.NotifyInterval < 0 {
		return nil, fmt.Errorf("%w: negative MaxMessageBytes, ClaimTimeout or NotifyInterval", ErrInvalidConfig)
	}
	cfg.NotifyInterval = cmp.Or(cfg.NotifyInterval, DefaultNotifyInterval)
	cfg.MaxMessageBytes = cmp.Or(cfg.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	cfg.ClaimTimeout = cmp.Or(cfg.ClaimTimeout, DefaultClaimTimeout)
	if cfg.ClaimTimeout < MinClaimTimeout {
		return nil, fmt.Errorf("%w: ClaimTimeout %v is below MinClaimTimeout (%v)", ErrInvalidConfig, cfg.ClaimTimeout, MinClaimTimeout)
	}
	t, err := parseTable(cfg.Table)
	if err != nil {
		return nil, err
	}
	if cfg.Channel == "" {
		cfg.Channel = t.name.String()
		if len(cfg.Channel) > 63 {
			h := fnv.New64a()
			h.Write([]byte(cfg.Channel))
			cfg.Channel = cfg.Channel[:46] + "_" + hex.EncodeToString(h.Sum(nil))
		}
	}
	if len(cfg.Channel) > 63 || strings.ContainsRune(cfg.Channel, 0) {
		return nil, fmt.Errorf("%w: channel %q longer than 63 bytes", ErrInvalidConfig, cfg.Channel)
	}
	s := &Store{pool: pool, cfg: cfg, t: t, sql: buildStatements(t.ident, t.name.Literal())}
	s.enqueue = s.sql.enqueueSQL(cfg.LockKeys, s.notifyInTx())
	if !cfg.DisableNotify && !cfg.NotifyInTransaction {
		s.nudge = &nudger{pool: pool, channel: cfg.Channel, every: cfg.NotifyInterval}
	}
	return s, nil
}

// notifyInTx reports whether Enqueue's statement sends the notification.
func (s *Store) notifyInTx() bool { return !s.cfg.DisableNotify && s.cfg.NotifyInTransaction }

// MaxMessageBytes returns the largest Message.Size Enqueue accepts
// (Config.MaxMessageBytes). It implements broker.SizeLimiter, which the
// relay reads to check that its publisher accepts as much.
func (s *Store) MaxMessageBytes() int { return s.cfg.MaxMessageBytes }

// Table returns the quoted table name used in SQL.
func (s *Store) Table() string { return s.t.ident }

// Channel returns the notification channel.
func (s *Store) Channel() string { return s.cfg.Channel }

// Schema returns the DDL of the store's table (see the package-level
// Schema).
func (s *Store) Schema() string { return s.t.schema }

// Migrate creates the store's table and indexes if they do not exist (see
// the package-level Migrate).
func (s *Store) Migrate(ctx context.Context) error { return s.t.migrate(ctx, s.pool) }

// table is a validated outbox table name and its DDL.
type table struct {
	name   pgtable.Name
	ident  string // quoted, possibly schema-qualified
	schema string // rendered DDL
}

// maxSuffix is the longest suffix the schema appends to the table name
// ("_status_check").
const maxSuffix = len("_status_check")

// parseTable validates a table name ("" means DefaultTable) with the
// library's one table-name rule (internal/pgtable). The error wraps both
// ErrInvalidConfig and ErrInvalidTable.
func parseTable(name string) (table, error) {
	n, err := pgtable.Parse("outbox/postgres", name, DefaultTable, maxSuffix)
	if err != nil {
		return table{}, invalidTable{err}
	}
	t := table{name: n, ident: n.Ident()}
	t.schema = strings.NewReplacer(
		"{table}", t.ident,
		"{status_check}", n.Derived("_status_check"),
		"{pending_index}", n.Derived("_pending"),
		"{blocking_index}", n.Derived("_blocking"),
		"{published_index}", n.Derived("_published"),
	).Replace(schemaTemplate)
	return t, nil
}

// invalidTable is a table-name error of pgtable.Parse (which names the
// package and wraps ErrInvalidTable) that also matches ErrInvalidConfig.
type invalidTable struct{ err error }

func (e invalidTable) Error() string   { return e.err.Error() }
func (e invalidTable) Unwrap() []error { return []error{e.err, ErrInvalidConfig} }

func (t table) migrate(ctx context.Context, db DB) error {
	// CREATE ... IF NOT EXISTS is not safe against itself: serialize on a
	// transaction-scoped lock. Without arguments Exec uses the simple
	// protocol, which runs the statements in one (implicit) transaction.
	_, err := db.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d, 0);\n%s", t.name.LockKey("steadfast.outbox"), t.schema))
	if err != nil {
		return fmt.Errorf("outbox/postgres: migrate %s: %w", t.ident, err)
	}
	return nil
}

// Schema returns the DDL that creates the outbox table named table ("" means
// DefaultTable) and its indexes, for migration tools. Every statement is
// idempotent (IF NOT EXISTS). The error wraps ErrInvalidTable and
// ErrInvalidConfig for a bad name.
func Schema(table string) (string, error) {
	t, err := parseTable(table)
	if err != nil {
		return "", err
	}
	return t.schema, nil
}

// Migrate creates the outbox table named table ("" means DefaultTable) and
// its indexes if they do not exist. It is idempotent and safe to run from
// several processes at once (it serializes on an advisory lock). db may be a
// transaction of your own migration.
func Migrate(ctx context.Context, db DB, table string) error {
	t, err := parseTable(table)
	if err != nil {
		return err
	}
	return t.migrate(ctx, db)
}

// Enqueue writes msgs as outbox rows through db, in argument order. Pass
// the pgx.Tx of your business transaction: the rows become visible to
// relays when it commits and vanish if it rolls back. With a pool or a
// connection outside a transaction the rows commit at once.
//
// Messages are validated and completed first (as a publisher does: an empty
// ID gets a UUIDv7, a zero Time the current time); a batch with an invalid
// message (empty topic, over MaxMessageBytes) writes nothing and returns an
// error wrapping broker.ErrEmptyTopic or broker.ErrMessageTooLarge. The trace
// context of ctx is added to messages that carry none. Unless DisableNotify
// is set, listening relays are woken: right away, outside the transaction,
// or by its commit with NotifyInTransaction (see Config). Enqueue with no
// messages does nothing.
func (s *Store) Enqueue(ctx context.Context, db DB, msgs ...broker.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if db == nil {
		return fmt.Errorf("outbox/postgres: enqueue: nil DB")
	}
	msgs, err := brokerimpl.Normalize(msgs, s.cfg.MaxMessageBytes)
	if err != nil {
		return fmt.Errorf("outbox/postgres: enqueue: %w", err)
	}
	for i := range msgs {
		if err := checkText(&msgs[i]); err != nil {
			return fmt.Errorf("outbox/postgres: enqueue: message %d (id %q): %w", i, msgs[i].ID, err)
		}
	}
	n := len(msgs)
	ids := make([]string, n)
	topics := make([]string, n)
	keys := make([]string, n)
	payloads := make([][]byte, n)
	headers := make([]string, n)
	times := make([]time.Time, n)
	trace := telemetry.TraceHeaders(ctx, s.cfg.Propagator)
	for i, m := range msgs {
		ids[i], topics[i], keys[i], payloads[i], times[i] = m.ID, m.Topic, m.Key, m.Payload, m.Time
		h := telemetry.WithTraceHeaders(m.Headers, trace)
		if len(h) > 0 {
			b, err := json.Marshal(h)
			if err != nil {
				return fmt.Errorf("outbox/postgres: enqueue: headers of message %d: %w", i, err)
			}
			headers[i] = string(b)
		}
	}
	args := []any{ids, topics, keys, payloads, headers, times}
	if s.notifyInTx() {
		args = append(args, s.cfg.Channel)
	}
	if _, err := db.Exec(ctx, s.enqueue, args...); err != nil {
		return fmt.Errorf("outbox/postgres: enqueue %d messages into %s: %w", n, s.t.ident, err)
	}
	if s.nudge != nil {
		s.nudge.nudge()
	}
	return nil
}

// checkText refuses a message whose ID, topic, key, header names or values
// PostgreSQL text and jsonb cannot hold exactly: invalid UTF-8 (JSON would
// silently turn it into U+FFFD) or a NUL byte. The error wraps
// broker.ErrInvalidMessage.
func checkText(m *broker.Message) error {
	bad := func(s string) bool { return !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 }
	field := ""
	switch {
	case bad(m.ID):
		field = "ID"
	case bad(m.Topic):
		field = "topic"
	case bad(m.Key):
		field = "key"
	}
	for k, v := range m.Headers {
		if field != "" {
			break
		}
		if bad(k) {
			field = fmt.Sprintf("header name %q", k)
		} else if bad(v) {
			field = fmt.Sprintf("value of header %q", k)
		}
	}
	if field == "" {
		return nil
	}
	return fmt.Errorf("%w: its %s is not valid UTF-8 text without NUL bytes, which the outbox stores exactly or not at all", broker.ErrInvalidMessage, field)
}

// Stats implements outbox.Store.
func (s *Store) Stats(ctx context.Context) (outbox.Stats, error) {
	var st outbox.Stats
	var oldest *time.Time
	if err := s.pool.QueryRow(ctx, s.sql.stats).Scan(&st.Pending, &oldest, &st.Dead); err != nil {
		return st, fmt.Errorf("outbox/postgres: stats: %w", err)
	}
	if oldest != nil {
		st.OldestPending = *oldest
	}
	return st, nil
}

// Cleanup implements outbox.Store.
func (s *Store) Cleanup(ctx context.Context, publishedBefore time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, s.sql.cleanup, publishedBefore, limit)
	if err != nil {
		return 0, fmt.Errorf("outbox/postgres: cleanup: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Parked implements outbox.Store.
func (s *Store) Parked(ctx context.Context, q outbox.ParkedQuery) ([]outbox.Record, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	rows, err := s.pool.Query(ctx, s.sql.parked, q.AfterID, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("outbox/postgres: list parked: %w", err)
	}
	recs, err := scanRecords(rows, true)
	if err != nil {
		return nil, fmt.Errorf("outbox/postgres: list parked: %w", err)
	}
	return recs, nil
}

// Redrive implements outbox.Store. It wakes listening relays.
func (s *Store) Redrive(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n, notified int
	if err := s.pool.QueryRow(ctx, s.sql.redrive, ids, s.cfg.Channel).Scan(&n, &notified); err != nil {
		return 0, fmt.Errorf("outbox/postgres: redrive: %w", err)
	}
	return n, nil
}

// Delete implements outbox.Store.
func (s *Store) Delete(ctx context.Context, ids ...int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, s.sql.deleteDead, ids)
	if err != nil {
		return 0, fmt.Errorf("outbox/postgres: delete parked: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Listen implements outbox.Notifier with LISTEN on a connection of the
// pool, held until ctx is done or the connection fails.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("outbox/postgres: listen: %w", err)
	}
	// The connection carries LISTEN state: never hand it back to the pool.
	defer func() { _ = conn.Hijack().Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.cfg.Channel}.Sanitize()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("outbox/postgres: listen %s: %w", s.cfg.Channel, err)
	}
	// Rows committed before LISTEN took effect were not announced.
	wake()
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("outbox/postgres: listen %s: %w", s.cfg.Channel, err)
		}
		wake()
	}
}

// scanRecords reads rows of the record columns. parked rows carry
// status and parked_at too.
func scanRecords(rows pgx.Rows, parked bool) ([]outbox.Record, error) {
	defer rows.Close()
	var recs []outbox.Record
	for rows.Next() {
		var (
			r        outbox.Record
			headers  []byte
			lastErr  *string
			status   string
			parkedAt *time.Time
		)
		dest := []any{&r.ID, &r.Message.ID, &r.Message.Topic, &r.Message.Key, &r.Message.Payload,
			&headers, &r.Message.Time, &r.EnqueuedAt, &r.Attempts, &lastErr}
		if parked {
			dest = append(dest, &status, &parkedAt)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		if lastErr != nil {
			r.LastError = *lastErr
		}
		if parked {
			r.Status = outbox.Status(status)
			if parkedAt != nil {
				r.ParkedAt = *parkedAt
			}
		} else {
			r.Status = outbox.StatusPending
		}
		if len(headers) > 0 {
			if err := json.Unmarshal(headers, &r.Message.Headers); err != nil {
				r.Message.Headers = nil
				r.Malformed = fmt.Sprintf("headers are not a JSON object of strings: %v", err)
			}
		}
		recs = append(recs, r)
	}
	return recs, rows.Err()
}
