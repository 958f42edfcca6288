// Package eventsource is event sourcing for Go services: streams of events
// as the source of truth, a typed decider and repository on top, a codec
// registry with upcasting, snapshots, and a global log reader that
// projections build on. Stores implement its ports: eventsource/postgres
// (PostgreSQL, pgx v5) and eventsource/memory (in process); both pass the
// conformance suite in eventsource/eventsourcetest.
//
// # First use
//
//	reg := eventsource.NewRegistry()
//	eventsource.Register[Deposited](reg, "account.deposited", 1)
//	eventsource.Register[Withdrawn](reg, "account.withdrawn", 1)
//
//	accounts, err := eventsource.NewRepository(store, reg, eventsource.Decider[Account, Command, any]{
//		Decide: decide, // func(Account, Command) ([]any, error)
//		Evolve: evolve, // func(Account, any) Account
//	}, eventsource.RepositoryConfig[Account]{Snapshot: eventsource.Every(100)})
//
//	res, err := accounts.Handle(ctx, "account-7", Withdraw{Amount: 30})
//
// Handle loads the stream (latest snapshot plus the events after it,
// upcast), calls Decide, and appends the events expecting the version it
// loaded; when another writer appended first it loads again and decides
// again (RepositoryConfig.MaxAttempts). See the package example.
//
// # Appends
//
// A Store appends the events of one or several streams atomically, each
// stream with an ExpectedVersion: AnyVersion, NoStream, StreamExists, or an
// exact version. A stream that does not match refuses the whole append with
// a *ConcurrencyError (errors.Is ErrConcurrency), carrying the expected and
// actual versions. Every event has an ID (a UUIDv7 unless you set one) that
// the store keeps once for good: an append retried after it committed (its
// answer lost to a broken connection) returns the stored versions and
// positions (AppendResult.Duplicate), so a retry with the same event IDs is
// exact; any other reuse of an ID fails with ErrDuplicateEvent. The
// Repository retries appends that failed with ErrUnavailable that way.
//
// The postgres store appends inside your transaction (espg.Store.In),
// so business rows, events and outbox messages commit together; its
// Config.Outbox publishes every appended event through the outbox in the
// same transaction (ToMessage: the message ID is the event ID, the key the
// stream ID).
//
// # The global log
//
// Every event has a Position in one global log, ordered by the appending
// transaction and then by the event's sequence number. A LogReader returns
// the events of transactions that have all ended (those below the fence):
// no event can ever appear before a position already returned, whatever
// the interleaving of commits and rollbacks, so a reader that resumes from
// its stored checkpoint never skips and never reorders an event, and each
// stream's events come in version order. The order is the order
// transactions first wrote, which equals commit order for transactions that
// append to the same stream (the store refuses an append that would break
// it, as a conflict with reason "reordered"), not for unrelated ones.
//
// The price: one open transaction holds every reader back until it ends
// (on PostgreSQL, any transaction on the server that holds a transaction
// ID, even one that writes no events). Reader.Run reports a transaction
// that holds it back longer than ReaderConfig.StallAfter: a warning naming
// the blocking session (its PostgreSQL pid, state, application and query),
// the MetricStall gauge, and ReaderConfig.OnStall.
//
// Reader is what projections build on: Read returns the next batch after
// a checkpoint, decoded and upcast, with the checkpoint to store in the same
// transaction as the batch's effects; Run repeats it, woken by the store's
// notifications (LISTEN/NOTIFY on PostgreSQL) with polling as the fallback.
// Filters select streams by prefix (Category) and events by type; the
// checkpoint still moves past what they leave out. For read-your-writes,
// compare a checkpoint with a command's Result.Position: once the
// checkpoint is at or after it, the projection has handled the command's
// events. A checkpoint beyond anything the store assigned (as after
// restoring an older backup) fails with ErrCheckpointAhead instead of
// skipping.
//
// # Types, versions and upcasting
//
// A Registry maps Go types to stable type names and schema versions and
// encodes them with a Codec (JSON by default). When an event's schema
// changes, register the new Go type under the next version and keep the
// old one with an Upcast (or UpcastMany for one event becoming several)
// to the next; stored events of the old version are then decoded into the
// old type and converted, once, on every read path: stream loads, the
// global reader, and so the states snapshots are made of. Check, which
// NewRepository and NewReader call, refuses a gap in a chain, a version
// without an upcaster, an unregistered target and cycles. An event whose
// type or version is not registered is an *UnknownEventError naming both; a
// payload that does not decode is a *DecodeError. Loads fail with them; a
// Reader stops at them (Policy Stop, the default) or skips and records
// them (Skip, in Batch.Skipped).
//
// # Snapshots
//
// A SnapshotStrategy (Every(n), or any predicate) decides after an append
// whether to store the state; a load then reads the snapshot and only the
// events after it. A snapshot records its state's schema version
// (RepositoryConfig.SnapshotVersion) and the ID of the event it was taken
// at: a snapshot of another schema version is upcast
// (RepositoryConfig.UpcastSnapshot) or ignored, and one whose event is not
// in the stream (written by a transaction that rolled back) is ignored:
// never misread. Writing one happens after the append and never fails it
// (a failure is logged and counted).
//
// # Stream lifecycle
//
// Lifecycle deletes a stream (a tombstone event closes it; readers of the
// global log receive StreamDeleted), truncates the events before a version
// (loads then start from a snapshot), and archives a stream (its events
// leave the global log and stay readable). Shredder deletes a stream's
// payloads for good: on PostgreSQL with Config.EncryptionKey, by deleting
// the stream's data key (crypto-shredding; see espg.Store.ShredStream
// for what it does not cover).
//
// # Metadata and tracing
//
// Events carry Metadata under the broker's header names: WithMetadata and
// CausedBy put correlation and causation IDs in a context, and the
// registry adds the context's trace context (W3C traceparent) when it
// encodes. Repository.Handle runs in a span "handle <stream>"; metrics and
// logs follow the module's telemetry rule (Logger, TracerProvider and
// MeterProvider in the configs; the OpenTelemetry global providers and
// slog.Default by default).
package eventsource
