package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/steadfast-go/steadfast/eventsource"
)

// ReadStream implements eventsource.StreamReader. The events are read
// with one query, streamed as the iteration goes (it holds a connection
// until it ends).
func (s *Store) ReadStream(ctx context.Context, streamID string, opts eventsource.ReadOptions) iter.Seq2[eventsource.Record, error] {
	return func(yield func(eventsource.Record, error) bool) {
		if err := eventsource.ValidateStreamID(streamID); err != nil {
			yield(eventsource.Record{}, err)
			return
		}
		lo, hi := int64(1), int64(math.MaxInt64)
		if opts.AsOfVersion > 0 {
			hi = opts.AsOfVersion
		}
		if !opts.AsOfTime.IsZero() {
			var v int64
			if err := s.db.QueryRow(ctx, s.sql.asOfTime, streamID, opts.AsOfTime).Scan(&v); err != nil {
				yield(eventsource.Record{}, wrap(ctx, "read stream", err))
				return
			}
			hi = min(hi, v)
		}
		dir := 0
		if opts.Backward {
			dir = 1
			if opts.From > 0 {
				hi = min(hi, opts.From)
			}
		} else if opts.From > 0 {
			lo = opts.From
		}
		var limit *int64
		if opts.Limit > 0 {
			l := int64(opts.Limit)
			limit = &l
		}
		read := func(archive int) (n int, state int16, ok bool) {
			minimal := 0
			if opts.Minimal {
				minimal = 1
			}
			rows, err := s.db.Query(ctx, s.sql.readStream[minimal][archive][dir], streamID, lo, hi, limit)
			if err != nil {
				yield(eventsource.Record{}, wrap(ctx, "read stream", err))
				return 0, 0, false
			}
			defer rows.Close()
			// Scanned into once-allocated variables: their addresses escape
			// into Scan, and yield gets a copy.
			var (
				wrapped []byte
				aead    keyCache
				md      []byte
				r       eventsource.Record
				sv      int32
			)
			dest := []any{&state, &wrapped, &r.Version, &r.Position.Sequence, &r.Position.Transaction, &r.ID, &r.Type,
				&sv, &r.Data, &md, &r.Time, &r.Shredded}
			if opts.Minimal {
				dest = []any{&state, &wrapped, &r.Version, &r.ID, &r.Type, &sv, &r.Data, &r.Shredded}
			}
			var fast *minimalDecoder
			if opts.Minimal {
				fast = newMinimalDecoder(rows.FieldDescriptions())
			}
			for rows.Next() {
				r = eventsource.Record{StreamID: streamID}
				var err error
				if fast != nil {
					state, wrapped, err = fast.decode(rows.RawValues(), &r)
				} else {
					err = rows.Scan(dest...)
				}
				if err != nil {
					yield(eventsource.Record{}, wrap(ctx, "read stream", err))
					return n, state, false
				}
				if fast != nil {
					sv = int32(r.SchemaVersion)
				}

				if n == 0 && state == stateDeleted {
					yield(eventsource.Record{}, fmt.Errorf("%w: %q", eventsource.ErrStreamDeleted, streamID))
					return n, state, false
				}
				n++
				r.SchemaVersion = int(sv)
				if err := s.finish(&r, md, wrapped, &aead); err != nil {
					yield(eventsource.Record{}, err)
					return n, state, false
				}
				if !yield(r, nil) {
					return n, state, false
				}
			}
			if err := rows.Err(); err != nil {
				yield(eventsource.Record{}, wrap(ctx, "read stream", err))
				return n, state, false
			}
			return n, state, true
		}
		n, _, ok := read(0)
		if !ok || n > 0 {
			return
		}
		// No events in range: does the stream exist, is it archived?
		var state int16
		var exists bool
		err := s.db.QueryRow(ctx, s.sql.streamState, streamID).Scan(&state, &exists)
		switch {
		case err != nil:
			yield(eventsource.Record{}, wrap(ctx, "read stream", err))
		case state == stateDeleted:
			yield(eventsource.Record{}, fmt.Errorf("%w: %q", eventsource.ErrStreamDeleted, streamID))
		case state == stateArchived:
			read(1)
		case !exists:
			yield(eventsource.Record{}, fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID))
		}
	}
}

// finish decodes a scanned record's metadata and opens its payload. The
// record's Shredded field holds the row's encrypted flag on entry.
func (s *Store) finish(r *eventsource.Record, md, wrapped []byte, keys *keyCache) error {
	if len(md) > 0 {
		if err := json.Unmarshal(md, &r.Metadata); err != nil {
			return fmt.Errorf("eventsource/postgres: stream %q version %d: metadata is not a JSON object of strings: %w", r.StreamID, r.Version, err)
		}
	}
	if !r.Shredded { // not encrypted
		return nil
	}
	if wrapped == nil || r.Data == nil {
		r.Data = nil // the key, or the plain payload, was erased
		return nil
	}
	keys.s = s
	a, err := keys.get(r.StreamID, wrapped)
	if err != nil {
		return err
	}
	plain, err := open(a, r.Data, []byte(r.ID))
	if err != nil {
		return fmt.Errorf("eventsource/postgres: stream %q version %d: cannot decrypt the payload: %w", r.StreamID, r.Version, err)
	}
	r.Data, r.Shredded = plain, false
	return nil
}

// ReadLog implements eventsource.LogReader with the xid8 fence: one
// statement returns the events after the checkpoint whose transaction is
// below the xmin of its own snapshot, and that xmin.
//
// Run it outside a transaction that has written: inside one, the fence
// cannot pass the transaction itself (it is open), so the log stays held
// back at it until it commits.
func (s *Store) ReadLog(ctx context.Context, q eventsource.LogQuery) (eventsource.Page, error) {
	if q.Limit <= 0 {
		q.Limit = eventsource.DefaultLogLimit
	}
	var prefixes, types []string
	if len(q.Filter.StreamPrefixes) > 0 {
		prefixes = q.Filter.StreamPrefixes
	}
	if len(q.Filter.Types) > 0 {
		types = q.Filter.Types
	}
	rows, err := s.db.Query(ctx, s.sql.readLog, q.After.Transaction, q.After.Sequence, q.Limit, prefixes, types)
	if err != nil {
		return eventsource.Page{}, wrap(ctx, "read log", err)
	}
	defer rows.Close()
	page := eventsource.Page{Records: make([]eventsource.Record, 0, min(q.Limit, 1024))}
	var (
		next    uint64
		lastSeq pgtype.Int8
		held    bool
		future  bool
		keys    keyCache
	)
	if d := newLogDecoder(rows.FieldDescriptions()); d != nil {
		for rows.Next() {
			var r eventsource.Record
			md, key, ok, err := d.decode(rows.RawValues(), &page, &next, &lastSeq, &held, &future, &r)
			if err != nil {
				return eventsource.Page{}, err
			}
			if !ok {
				continue
			}
			if err := s.finish(&r, md, key, &keys); err != nil {
				return eventsource.Page{}, err
			}
			page.Records = append(page.Records, r)
		}
	}
	for rows.Next() { // when the wire formats were not the expected ones
		var (
			pos, version pgtype.Int8
			xid          pgtype.Uint64
			stream, id   pgtype.Text
			typ          pgtype.Text
			sv           pgtype.Int4
			data, md     []byte
			at           pgtype.Timestamptz
			enc          pgtype.Bool
			key          []byte
		)
		if err := rows.Scan(&page.Fence, &next, &lastSeq, &held, &future, &pos, &xid, &stream, &version, &id, &typ, &sv,
			&data, &md, &at, &enc, &key); err != nil {
			return eventsource.Page{}, wrap(ctx, "read log", err)
		}
		if !pos.Valid {
			continue
		}
		r := eventsource.Record{StreamID: stream.String, Version: version.Int64,
			Position: eventsource.Position{Transaction: xid.Uint64, Sequence: pos.Int64}}
		r.ID, r.Type, r.SchemaVersion, r.Data, r.Time, r.Shredded = id.String, typ.String, int(sv.Int32), data, at.Time, enc.Bool
		if err := s.finish(&r, md, key, &keys); err != nil {
			return eventsource.Page{}, err
		}
		page.Records = append(page.Records, r)
	}
	if err := rows.Err(); err != nil {
		return eventsource.Page{}, wrap(ctx, "read log", err)
	}
	if q.After.Transaction > next || (q.After.Sequence > 0 && (!lastSeq.Valid || q.After.Sequence > lastSeq.Int64)) {
		return eventsource.Page{}, fmt.Errorf("%w: checkpoint %v, but the server's next transaction ID is %d and the last sequence number drawn is %d (restored from an older backup?)",
			eventsource.ErrCheckpointAhead, q.After, next, lastSeq.Int64)
	}
	if future {
		return eventsource.Page{}, fmt.Errorf("%w: events carry transaction IDs at or after %d, which the server has not assigned yet: the events table comes from another cluster (a logical restore?); its transaction_id values must be lowered below pg_snapshot_xmin(pg_current_snapshot()) before readers can go on",
			eventsource.ErrCheckpointAhead, next)
	}
	page.HeldBack = held
	page.Next = q.After
	if n := len(page.Records); n > 0 {
		page.Next = page.Records[n-1].Position
	}
	if len(page.Records) < q.Limit {
		if f := (eventsource.Position{Transaction: page.Fence}); page.Next.Before(f) {
			page.Next = f
		}
	}
	return page, nil
}

// Blocker implements eventsource.StallInspector: the session whose
// transaction is the fence (pg_stat_activity.backend_xid), or the prepared
// transaction. Other roles' sessions show their pid but, without the
// pg_read_all_stats role, not their state or query.
func (s *Store) Blocker(ctx context.Context, fence uint64) (eventsource.Blocker, error) {
	b := eventsource.Blocker{Transaction: fence}
	var started pgtype.Timestamptz
	err := s.pool.QueryRow(ctx, s.sql.blocker, fence).Scan(&b.PID, &started, &b.State, &b.Application, &b.Query)
	if err == nil {
		b.Started = started.Time
		return b, nil
	}
	if err != pgx.ErrNoRows {
		return b, wrap(ctx, "find blocker", err)
	}
	var at time.Time
	err = s.pool.QueryRow(ctx, s.sql.prepared, fence).Scan(&b.Prepared, &at)
	if err == nil {
		b.Started = at
		return b, nil
	}
	if err != pgx.ErrNoRows {
		return b, wrap(ctx, "find blocker", err)
	}
	return b, nil // ended since
}

// Listen implements eventsource.Notifier with LISTEN on a connection of
// the pool, held until ctx is done or the connection fails.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return wrap(ctx, "listen", err)
	}
	// The connection carries LISTEN state: never hand it back to the pool.
	defer func() { _ = conn.Hijack().Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.cfg.Channel}.Sanitize()); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return wrap(ctx, "listen", err)
	}
	// Events committed before LISTEN took effect were not announced.
	wake()
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return wrap(ctx, "listen", err)
		}
		wake()
	}
}
