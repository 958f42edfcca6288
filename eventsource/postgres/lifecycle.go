package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/internal/storeutil"
)

// DeleteStream implements eventsource.Lifecycle: the tombstone is appended
// like any event (notifying readers, enqueued in the outbox when one is
// configured) and the stream's row is marked deleted in the same
// statement; then the snapshot is dropped.
func (s *Store) DeleteStream(ctx context.Context, streamID string, expected eventsource.ExpectedVersion) (eventsource.AppendResult, error) {
	a := []eventsource.StreamAppend{{StreamID: streamID, Expected: expected, Events: []eventsource.EventData{storeutil.Tombstone()}}}
	if err := eventsource.ValidateAppend(a); err != nil {
		return eventsource.AppendResult{}, err
	}
	exp, err := storeutil.DeleteExpectation(streamID, expected)
	if err != nil {
		return eventsource.AppendResult{}, err
	}
	a[0].Expected = exp
	res, err := s.Append(ctx, a...)
	if err != nil {
		return eventsource.AppendResult{}, storeutil.DeleteError(err, expected)
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM "+s.t.snapshots+" WHERE stream_id = $1", streamID); err != nil {
		s.log.WarnContext(ctx, "eventsource/postgres: the snapshot of a deleted stream was not dropped", "stream", streamID, "error", err)
	}
	return res[0], nil
}

// TruncateStream implements eventsource.Lifecycle with a DELETE of the
// stream's events before the version (from the archive too), keeping its
// last event.
func (s *Store) TruncateStream(ctx context.Context, streamID string, before int64) (int, error) {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return 0, err
	}
	var exists bool
	var n int64
	if err := s.db.QueryRow(ctx, s.sql.truncate, streamID, before).Scan(&exists, &n); err != nil {
		return 0, wrap(ctx, "truncate stream", err)
	}
	if !exists {
		return 0, fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID)
	}
	return int(n), nil
}

// marker returns the append of a marker closing a stream.
func marker(streamID, typ string, expected eventsource.ExpectedVersion) []eventsource.StreamAppend {
	return []eventsource.StreamAppend{{StreamID: streamID, Expected: expected,
		Events: []eventsource.EventData{{Type: typ, SchemaVersion: 1}}}}
}

// ArchiveStream implements eventsource.Lifecycle. In one transaction (a
// savepoint of yours), it appends the marker, which closes the stream
// (concurrent appenders conflict with it, later ones find the stream
// closed), and moves the events before it to the archive table.
func (s *Store) ArchiveStream(ctx context.Context, streamID string) error {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return err
	}
	err := s.atomically(ctx, func(db DB) error {
		res, err := s.In(db).Append(ctx, marker(streamID, markerArchived, eventsource.StreamExists)...)
		if err != nil {
			return err
		}
		if _, err := db.Exec(ctx, s.sql.archive, streamID, res[0].Version); err != nil {
			return wrap(ctx, "archive stream", err)
		}
		return nil
	})
	var ce *eventsource.ConcurrencyError
	switch {
	case errors.Is(err, eventsource.ErrStreamArchived):
		return nil
	case errors.As(err, &ce) && ce.Actual == 0:
		return fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID)
	}
	return err
}

// ShredStream implements eventsource.Shredder. With Config.EncryptionKey
// it deletes the stream's data key, so its sealed payloads can no longer be
// opened; payloads the stream stored in plain text (before encryption was
// turned on, or without it) are erased in place. Either way the stream's
// snapshot is deleted and, when the stream was open, a marker closes it as
// shredded: reads return its records with Shredded set, appends are
// refused with ErrShredded (also for a stream that had no events yet,
// whose ID is thereby reserved). A deleted or archived stream stays so,
// its payloads erased.
//
// What it does not cover: metadata (stored in plain text), copies outside
// the tables (outbox messages of the events, which carry the plain payload,
// messages already published to a broker, read models built from the
// events), and backups or WAL archives taken before the shred, which hold
// the wrapped key (and the EncryptionKey opens it) or the plain payload.
func (s *Store) ShredStream(ctx context.Context, streamID string) error {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return err
	}
	return s.atomically(ctx, func(db DB) error {
		_, err := s.In(db).Append(ctx, marker(streamID, markerShredded, eventsource.AnyVersion)...)
		switch {
		case err == nil, errors.Is(err, eventsource.ErrShredded), errors.Is(err, eventsource.ErrStreamDeleted),
			errors.Is(err, eventsource.ErrStreamArchived):
		default:
			return err
		}
		if _, err := db.Exec(ctx, s.sql.shred, streamID); err != nil {
			return wrap(ctx, "shred stream", err)
		}
		return nil
	})
}

// SaveSnapshot implements eventsource.SnapshotStore through the pool, never
// in a bound transaction. The state is sealed with the stream's key when
// the stream has one. A snapshot of a stream the pool cannot see (not
// committed yet, deleted or shredded) is not stored.
func (s *Store) SaveSnapshot(ctx context.Context, snap eventsource.Snapshot) error {
	if err := eventsource.ValidateStreamID(snap.StreamID); err != nil {
		return err
	}
	data, enc := snap.Data, false
	if s.aead != nil {
		var wrapped []byte
		err := s.pool.QueryRow(ctx, s.sql.streamKey, snap.StreamID).Scan(&wrapped)
		if err != nil && err != pgx.ErrNoRows {
			return wrap(ctx, "save snapshot", err)
		}
		if err == nil && wrapped == nil {
			return nil // shredded
		}
		if wrapped != nil {
			a, err := s.unwrapKey(wrapped, snap.StreamID)
			if err != nil {
				return err
			}
			if data, err = seal(a, snap.Data, snapshotAAD(snap.StreamID)); err != nil {
				return err
			}
			enc = true
		}
	}
	if snap.Time.IsZero() {
		snap.Time = time.Now()
	}
	if _, err := s.pool.Exec(ctx, s.sql.saveSnapshot, snap.StreamID, snap.Version, snap.EventID, snap.SchemaVersion,
		data, enc, snap.Time); err != nil {
		return wrap(ctx, "save snapshot", err)
	}
	return nil
}

func snapshotAAD(streamID string) []byte { return []byte("snapshot:" + streamID) }

// LoadSnapshot implements eventsource.SnapshotStore through the pool.
func (s *Store) LoadSnapshot(ctx context.Context, streamID string) (eventsource.Snapshot, bool, error) {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return eventsource.Snapshot{}, false, err
	}
	snap := eventsource.Snapshot{StreamID: streamID}
	var enc bool
	var wrapped []byte
	var sv int32
	err := s.pool.QueryRow(ctx, s.sql.loadSnapshot, streamID).Scan(&snap.Version, &snap.EventID, &sv, &snap.Data, &enc, &snap.Time, &wrapped)
	if err == pgx.ErrNoRows {
		return eventsource.Snapshot{}, false, nil
	}
	if err != nil {
		return eventsource.Snapshot{}, false, wrap(ctx, "load snapshot", err)
	}
	snap.SchemaVersion = int(sv)
	if enc {
		if wrapped == nil {
			return eventsource.Snapshot{}, false, nil
		}
		a, err := s.unwrapKey(wrapped, streamID)
		if err != nil {
			return eventsource.Snapshot{}, false, err
		}
		if snap.Data, err = open(a, snap.Data, snapshotAAD(streamID)); err != nil {
			return eventsource.Snapshot{}, false, fmt.Errorf("eventsource/postgres: open the snapshot of %q: %w", streamID, err)
		}
	}
	return snap, true, nil
}
