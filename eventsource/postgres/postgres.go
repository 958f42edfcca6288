package postgres

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
)

//go:embed schema.sql
var schemaTemplate string

// ErrInvalidConfig is wrapped by New's errors for a bad setting.
var ErrInvalidConfig = errors.New("eventsource/postgres: invalid config")

// ErrInvalidTable is wrapped by the errors of a bad table name (it is
// pgtable's, shared by every postgres store of this module).
var ErrInvalidTable = pgtable.ErrInvalidTable

// DB is what the store runs its statements on: pgx.Tx, *pgxpool.Pool and
// *pgx.Conn satisfy it. Pass your transaction (Store.In) to make appends
// commit with your other writes.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	Begin(ctx context.Context) (pgx.Tx, error)
}

var (
	_ DB = pgx.Tx(nil)
	_ DB = (*pgxpool.Pool)(nil)
	_ DB = (*pgx.Conn)(nil)
)

// Defaults for Config fields left zero.
const (
	DefaultTable         = "events"
	DefaultMaxEventBytes = 1 << 20
)

// maxSuffix is the longest suffix the store appends to the table name
// ("_snapshots_pkey").
const maxSuffix = 15

// Config describes an event store. The zero value uses a table named
// "events" (and its companions events_snapshots, events_keys,
// events_archive) on the connection's search_path.
type Config struct {
	// Table is the events table, "name" or "schema.name": lowercase
	// letters, digits and underscores (see internal/pgtable), the table
	// part at most 48 bytes. The companion tables take its name plus a
	// suffix. Default DefaultTable.
	Table string
	// Channel is the LISTEN/NOTIFY channel appends notify and readers
	// listen on. Default: the Table string (shortened with a hash when
	// longer than 63 bytes).
	Channel string
	// DisableNotify stops appends from notifying. Readers then find new
	// events by polling only.
	DisableNotify bool
	// NotifyInterval coalesces the notifications of appends that run in a
	// transaction of the store's own (through the pool): after such an
	// append commits, the store sends one NOTIFY through the pool, at most
	// one per interval, so readers wake at most an interval late. An append
	// in your transaction notifies from its statement, which PostgreSQL
	// delivers at your commit; that costs the commit a lock that serializes
	// notifying commits. Default DefaultNotifyInterval (5ms); negative
	// notifies from every append's statement.
	NotifyInterval time.Duration
	// MaxEventBytes bounds an event's payload. Default DefaultMaxEventBytes;
	// negative means no limit of the store's own (PostgreSQL's bytea limit
	// of 1 GB remains).
	MaxEventBytes int
	// EncryptionKey turns on crypto-shredding: a 32-byte AES-256 key that
	// wraps a random data key per stream; events' payloads and snapshots
	// are encrypted (AES-256-GCM) with their stream's data key, and
	// ShredStream deletes it. Keep it out of the database. Nil stores
	// payloads in plain text; ShredStream then erases them in place.
	EncryptionKey []byte
	// Outbox, when set, makes every append also enqueue one message per
	// event (eventsource.ToMessage) in the same transaction, so events and
	// their publication commit together: ID the event ID (consumers
	// deduplicate on it), Key the stream ID (per-stream order). A retried
	// append that was already stored enqueues nothing.
	Outbox *outboxpg.Store
	// OutboxTopic names the topic of an event's message. Default: the
	// stream's category (eventsource.CategoryOf).
	OutboxTopic func(eventsource.Record) string
	// Logger receives warnings. Nil means slog.Default().
	Logger *slog.Logger
}

// Store is an event store on PostgreSQL. It implements eventsource.Store,
// LogReader, Lifecycle, Shredder, Notifier and StallInspector. It is safe
// for concurrent use; a Store bound to a transaction (In) is as safe as the
// transaction.
type Store struct {
	pool   *pgxpool.Pool
	db     DB
	tx     bool // db is a pgx.Tx
	cfg    Config
	t      tables
	sql    statements
	aead   cipher.AEAD // key-encryption, nil without EncryptionKey
	log    *slog.Logger
	notify bool
	poker  *notifier // nil: notify from the statement
}

var (
	_ eventsource.Store          = (*Store)(nil)
	_ eventsource.LogReader      = (*Store)(nil)
	_ eventsource.Lifecycle      = (*Store)(nil)
	_ eventsource.Shredder       = (*Store)(nil)
	_ eventsource.Notifier       = (*Store)(nil)
	_ eventsource.StallInspector = (*Store)(nil)
)

// New returns a store on the tables cfg describes. pool serves every
// operation that does not run in your transaction, and the LISTEN
// connection. New does not touch the database: call Migrate (or apply
// Schema with your migration tool) first.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	t, err := parseTables(cfg.Table)
	if err != nil {
		return nil, err
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Channel == "" {
		cfg.Channel = cfg.Table
		if len(cfg.Channel) > 63 {
			h := fnv.New64a()
			h.Write([]byte(cfg.Table))
			cfg.Channel = cfg.Table[:46] + "_" + hex.EncodeToString(h.Sum(nil))
		}
	}
	if len(cfg.Channel) > 63 || strings.ContainsRune(cfg.Channel, 0) {
		return nil, fmt.Errorf("%w: channel %q is longer than 63 bytes or holds NUL", ErrInvalidConfig, cfg.Channel)
	}
	if cfg.MaxEventBytes == 0 {
		cfg.MaxEventBytes = DefaultMaxEventBytes
	}
	if cfg.NotifyInterval == 0 {
		cfg.NotifyInterval = DefaultNotifyInterval
	}
	s := &Store{pool: pool, db: pool, cfg: cfg, t: t, log: telemetry.Logger(cfg.Logger), notify: !cfg.DisableNotify}
	if s.notify && cfg.NotifyInterval > 0 {
		s.poker = &notifier{pool: pool, channel: cfg.Channel, interval: cfg.NotifyInterval, log: s.log}
	}
	if cfg.EncryptionKey != nil {
		if len(cfg.EncryptionKey) != 32 {
			return nil, fmt.Errorf("%w: EncryptionKey is %d bytes, want 32 (AES-256)", ErrInvalidConfig, len(cfg.EncryptionKey))
		}
		block, err := aes.NewCipher(cfg.EncryptionKey)
		if err != nil {
			return nil, fmt.Errorf("%w: EncryptionKey: %v", ErrInvalidConfig, err)
		}
		if s.aead, err = cipher.NewGCM(block); err != nil {
			return nil, fmt.Errorf("%w: EncryptionKey: %v", ErrInvalidConfig, err)
		}
	}
	s.sql = buildStatements(t)
	return s, nil
}

// In returns the store bound to db, typically your pgx.Tx: its appends,
// reads and lifecycle operations run in db, so they commit (or roll back)
// with your other writes, and its reads see your transaction's own
// appends. Snapshots, LISTEN and stall inspection still use the pool:
// snapshots are a cache and must not fail or lengthen your transaction.
//
// Within a transaction, finish iterating a ReadStream before running
// another statement on it (a pgx connection runs one query at a time).
func (s *Store) In(db DB) *Store {
	c := *s
	c.db = db
	_, c.tx = db.(pgx.Tx)
	return &c
}

// Table returns the quoted events table.
func (s *Store) Table() string { return s.t.events }

// Channel returns the notification channel.
func (s *Store) Channel() string { return s.cfg.Channel }

// Schema returns the DDL of the store's tables.
func (s *Store) Schema() string { return s.t.schema }

// Migrate creates the store's tables and indexes if they do not exist. It
// is idempotent and safe to run from several processes at once.
func (s *Store) Migrate(ctx context.Context) error { return s.t.migrate(ctx, s.pool) }

// Schema returns the DDL that creates the event store tables for table
// ("" means DefaultTable), for migration tools. Every statement is
// idempotent. The error wraps ErrInvalidTable for a bad name.
func Schema(table string) (string, error) {
	t, err := parseTables(table)
	if err != nil {
		return "", err
	}
	return t.schema, nil
}

// Migrate creates the event store tables for table ("" means
// DefaultTable) if they do not exist, through db (which may be your own
// migration's transaction). It serializes concurrent runs on an advisory
// lock.
func Migrate(ctx context.Context, db DB, table string) error {
	t, err := parseTables(table)
	if err != nil {
		return err
	}
	return t.migrate(ctx, db)
}

// tables holds the quoted names derived from Config.Table.
type tables struct {
	name      pgtable.Name
	events    string
	snapshots string
	keys      string
	archive   string
	seq       string
	schema    string
	lock      int32
}

func parseTables(table string) (tables, error) {
	n, err := pgtable.Parse("eventsource/postgres", table, DefaultTable, maxSuffix)
	if err != nil {
		return tables{}, err
	}
	t := tables{name: n, events: n.Ident(), snapshots: n.Sibling("_snapshots"),
		keys: n.Sibling("_keys"), archive: n.Sibling("_archive"), seq: n.Sibling("_seq"),
		lock: n.LockKey("steadfast.eventsource")}
	t.schema = strings.NewReplacer(
		"{events}", t.events,
		"{seq}", t.seq,
		"{events_pkey}", n.Derived("_pkey"),
		"{event_id}", n.Derived("_event_id"),
		"{log_index}", n.Derived("_log"),
		"{snapshots}", t.snapshots,
		"{snapshots_pkey}", n.Derived("_snapshots_pkey"),
		"{keys}", t.keys,
		"{keys_pkey}", n.Derived("_keys_pkey"),
		"{archive}", t.archive,
		"{archive_pkey}", n.Derived("_archive_pkey"),
		"{archive_id}", n.Derived("_archive_id"),
	).Replace(schemaTemplate)
	return t, nil
}

func (t tables) migrate(ctx context.Context, db DB) error {
	// CREATE ... IF NOT EXISTS is not safe against itself: serialize on a
	// transaction-scoped lock. Without arguments Exec uses the simple
	// protocol, which runs the statements in one implicit transaction.
	if _, err := db.Exec(ctx, fmt.Sprintf("SELECT pg_advisory_xact_lock(%d);\n%s", t.lock, t.schema)); err != nil {
		return fmt.Errorf("eventsource/postgres: migrate %s: %w", t.events, err)
	}
	return nil
}

// wrap gives a database error the package's prefix and classifies it:
// the context's error when ctx ended, ErrUnavailable when the server could
// not be reached or the connection broke (the statement may or may not have
// run), else the error as it is.
func wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && unavailableCode(pgErr.Code):
		return fmt.Errorf("eventsource/postgres: %s: %w: %w", op, eventsource.ErrUnavailable, err)
	case errors.As(err, &pgErr):
		return fmt.Errorf("eventsource/postgres: %s: %w", op, err)
	case ctx.Err() != nil:
		return fmt.Errorf("eventsource/postgres: %s: %w", op, ctx.Err())
	case errors.Is(err, eventsource.ErrInvalidEvent), errors.Is(err, eventsource.ErrInvalidStreamID):
		return err
	}
	return fmt.Errorf("eventsource/postgres: %s: %w: %w", op, eventsource.ErrUnavailable, err)
}

// unavailableCode reports the SQLSTATEs of a server that ended or refused
// the session: connection exceptions (08), operator intervention (57P01
// admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now) and too
// many connections (53300).
func unavailableCode(code string) bool {
	return strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03" || code == "53300"
}

// sqlState returns the SQLSTATE and constraint of a server error.
func sqlState(err error) (code, constraint string) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code, pgErr.ConstraintName
	}
	return "", ""
}

// topic returns the outbox topic of r.
func (s *Store) topic(r eventsource.Record) string {
	if s.cfg.OutboxTopic != nil {
		return s.cfg.OutboxTopic(r)
	}
	return eventsource.CategoryOf(r.StreamID)
}

var _ = broker.ReservedHeaderPrefix
