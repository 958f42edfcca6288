package eventsource

import (
	"context"
	"iter"
)

// Appender appends events to streams.
//
// Append stores the events of every StreamAppend atomically: either all of
// them, in all streams, or none. It first validates the whole append
// (ValidateAppend): bad input is refused with an error wrapping
// ErrInvalidStreamID or ErrInvalidEvent and nothing is stored. Then, for
// each stream:
//
//   - the stream must match its ExpectedVersion, else nothing is stored and
//     the error is a *ConcurrencyError (ErrConcurrency) carrying the expected
//     and actual versions;
//   - a deleted stream refuses with ErrStreamDeleted, an archived one with
//     ErrStreamArchived, a shredded one with ErrShredded;
//   - each event gets the next stream version (consecutive from the
//     stream's version + 1) and a global Position; events of one append
//     are in argument order in the stream and in the global log.
//
// Event IDs are unique for good. If every event of the append is already
// stored, in the same streams, at consecutive versions that satisfy the
// expectations (an append retried after its commit succeeded but its answer
// was lost), Append stores nothing and returns the stored versions and
// positions with AppendResult.Duplicate set. Any other reuse of a stored ID
// (another stream, other versions, part of the events) fails with
// ErrDuplicateEvent. Results are in argument order.
type Appender interface {
	Append(ctx context.Context, appends ...StreamAppend) ([]AppendResult, error)
}

// StreamReader reads one stream.
//
// ReadStream yields the stream's events in version order (or reverse order
// with ReadOptions.Backward), as selected by opts, leaving out the markers
// of archiving and shredding (IsMarker). A stream with no events yields
// ErrStreamNotFound, a deleted one ErrStreamDeleted, each as the only (zero
// Record, error) pair. An archived stream reads as before it was
// archived. Events that TruncateStream removed are not returned: a forward
// read from version 1 of a truncated stream starts at its first remaining
// version. The records are the caller's to keep.
type StreamReader interface {
	ReadStream(ctx context.Context, streamID string, opts ReadOptions) iter.Seq2[Record, error]
}

// LogReader reads the global log: every stream's events in one order.
//
// ReadLog returns up to q.Limit records after q.After that pass q.Filter.
// The order is Position order, and it is final: a record is returned only
// once every transaction that could still write a record before it has
// ended (it belongs to a transaction before the fence, Page.Fence), so a
// reader that resumes from the checkpoint of its last page never misses an
// event and never sees one out of order, whatever the interleaving of
// commits and rollbacks. Each stream's events appear in version order. A
// transaction's events appear together.
//
// The cost of this guarantee is that one long transaction (anywhere on the
// database server, even one that writes no events) holds every reader back
// until it ends: Page.HeldBack says so, and StallInspector names it.
//
// A checkpoint beyond anything the store has assigned (after a restore of
// the database) fails with ErrCheckpointAhead instead of skipping the
// events written since.
type LogReader interface {
	ReadLog(ctx context.Context, q LogQuery) (Page, error)
}

// SnapshotStore keeps the latest snapshot of each stream.
//
// SaveSnapshot replaces the stream's snapshot. LoadSnapshot returns it, and
// false when there is none. A snapshot is a cache: stores may drop it at
// any time (DeleteStream, shredding), and loads check it against the
// stream (Snapshot.EventID) before using it.
type SnapshotStore interface {
	SaveSnapshot(ctx context.Context, s Snapshot) error
	LoadSnapshot(ctx context.Context, streamID string) (Snapshot, bool, error)
}

// Store is what a Repository needs: appends, stream reads and snapshots.
// Both stores of this module (eventsource/postgres, eventsource/memory)
// implement it, along with LogReader, Lifecycle, Shredder, Notifier and
// StallInspector, and pass the suite in eventsource/eventsourcetest.
type Store interface {
	Appender
	StreamReader
	SnapshotStore
}

// Lifecycle ends or trims streams.
type Lifecycle interface {
	// DeleteStream soft-deletes a stream that matches expected: it appends
	// a tombstone event (StreamDeleted, type TypeStreamDeleted) as its last
	// event, so readers of the global log learn of the deletion, and from
	// then on reads fail with ErrStreamDeleted and appends are refused. The
	// events stay stored (and in the global log); the snapshot is dropped.
	// Deleting a stream with no events fails with ErrStreamNotFound;
	// expecting NoStream is refused (ErrInvalidEvent). It returns the
	// tombstone's append result.
	DeleteStream(ctx context.Context, streamID string, expected ExpectedVersion) (AppendResult, error)
	// TruncateStream removes the stream's events before version before
	// (from the stream and the global log, for good), except its last
	// event, which is always kept (appends check their expected version
	// against it). Later versions keep their numbers; appends continue.
	// Loads then need a snapshot at or after before (else ErrTruncated). It
	// returns how many events it removed.
	TruncateStream(ctx context.Context, streamID string, before int64) (int, error)
	// ArchiveStream makes a stream read-only and moves its events out of
	// the global log into archive storage: it appends a marker
	// (StreamArchived, type TypeStreamArchived), which readers of the
	// global log receive; reads of the stream still return its events;
	// appends fail with ErrStreamArchived; readers of the global log that
	// had not passed the events yet will not see them. Archive a stream
	// only once the projections that need it have passed its last event.
	// Archiving an archived stream does nothing.
	ArchiveStream(ctx context.Context, streamID string) error
}

// Shredder deletes a stream's encryption key (crypto-shredding). Stores
// that encrypt payloads with a per-stream key implement it.
type Shredder interface {
	// ShredStream deletes the stream's key and snapshot: its payloads can
	// no longer be decrypted by anyone holding the database (reads return
	// records with Shredded set, loads fail with ErrShredded, appends are
	// refused, also for a stream that had no events yet). A stream that was
	// open gets a marker (StreamShredded, type TypeStreamShredded), which
	// readers of the global log receive. Shredding again does nothing new.
	// It cannot be undone.
	ShredStream(ctx context.Context, streamID string) error
}

// Notifier is implemented by stores that can wake readers of the global
// log when events were committed. Listen calls wake after commits until
// ctx is done (it then returns nil) or the notification channel fails (it
// returns the error; readers fall back to polling and listen again later).
// wake must not block.
type Notifier interface {
	Listen(ctx context.Context, wake func()) error
}

// StallInspector is implemented by stores that can name the open
// transaction holding readers of the global log back (the one numbered
// fence, Page.Fence). It returns a Blocker with only Transaction set when
// it cannot see more.
type StallInspector interface {
	Blocker(ctx context.Context, fence uint64) (Blocker, error)
}
