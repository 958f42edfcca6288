// Package postgres is the event store on PostgreSQL (pgx v5). It implements
// every port of package eventsource: appends, stream reads, the global log
// with the xid8 fence, snapshots, the stream lifecycle, crypto-shredding,
// LISTEN/NOTIFY wake-ups and stall inspection.
//
// Import it as espg, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import espg "github.com/steadfast-go/steadfast/eventsource/postgres"
//
//	store, err := espg.New(pool, espg.Config{})
//	err = store.Migrate(ctx)
//
//	// Events commit with your business rows:
//	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, `UPDATE ...`); err != nil {
//			return err
//		}
//		_, err := repo.With(store.In(tx)).Handle(ctx, "order-7", Ship{})
//		return err
//	})
//
// # Tables
//
// Config.Table (default "events") and its companions: table_snapshots (the
// latest snapshot of each stream), table_keys (per-stream data keys, with
// crypto-shredding) and table_archive (events of archived streams). Migrate
// creates them idempotently, serialized by an advisory lock; Schema returns
// the DDL for migration tools. Names are validated (internal/pgtable) and
// always quoted.
//
// The events table has one row per event: position (from an identity
// sequence), transaction_id (xid8, the appending transaction), stream ID,
// version, event ID (unique), type, schema version, data (bytea: the
// codec's bytes, or AES-GCM ciphertext), metadata (jsonb) and time. Its
// primary key (stream_id, version) is what orders a stream; an index on
// (transaction_id, position) is the global log's order.
//
// # Appends
//
// An append of one stream is one statement and only inserts: it reads the
// stream's last event as expected (the one at the expected version, or the
// last one), and inserts the new events after it, ON CONFLICT DO NOTHING on
// the primary key. A concurrent appender that took the version, committed
// or not, makes the statement insert nothing: the conflict raises no error
// and a transaction of yours stays usable. A stream's last event may close
// it (a tombstone, or the marker of archiving or shredding): appends then
// refuse. Nothing is ever updated in place, so an append costs the same
// while a long transaction elsewhere keeps PostgreSQL from pruning row
// versions. Several streams, or an Outbox, take a transaction (a savepoint
// of yours), their statements pipelined in one round trip.
//
// Appends of one stream must come in transaction order (see Append); the
// rare transaction that wrote before appending to a contended stream can be
// refused with reason "reordered" and retried.
//
// Notifications: an append in a transaction of the store's own is announced
// after it commits, one NOTIFY per Config.NotifyInterval at most; one in
// your transaction notifies from its statement, delivered at your commit.
//
// # The global log
//
// ReadLog is one statement: the events after the checkpoint (transaction
// ID, position) whose transaction is below pg_snapshot_xmin of the
// statement's own snapshot: every transaction below it has ended, so those
// events are all visible and none can appear among them later. The same
// statement returns the fence, whether committed events wait beyond it
// (HeldBack), and checks the checkpoint against the server's next
// transaction ID and the position sequence (ErrCheckpointAhead after a
// restore), and the events against the server's transaction IDs (events
// copied from another cluster by a logical restore carry IDs the server
// has not assigned; readers would wait for them forever). Transaction IDs
// are 64-bit xid8 throughout: no wraparound.
//
// Any transaction on the server that holds a transaction ID holds readers
// back while it runs, including a reader's own transaction once it has
// written: read the log outside such a transaction. Blocker names the
// session from pg_stat_activity (backend_xid) or pg_prepared_xacts; a role
// without pg_read_all_stats sees other roles' pids but not their queries.
// Reader.Run holds one pool connection for LISTEN while it runs.
//
// # Crypto-shredding
//
// With Config.EncryptionKey (32 bytes, kept out of the database), each
// stream gets a random data key, stored wrapped in table_keys; payloads and
// snapshots are sealed with it (AES-256-GCM, bound to the event ID or
// stream), and ShredStream deletes it. Without a key, ShredStream erases
// the payloads in place. Metadata, outbox copies, published messages, read
// models and earlier backups are not covered (see ShredStream).
//
// # Costs
//
// Against raw pgx doing the same rows (make bench; see bench_test.go), an
// append adds an index probe of the expected event and the speculative
// insertion of ON CONFLICT; AnyVersion and StreamExists appends also probe
// their event IDs. Loads and log reads decode every event once.
package postgres
