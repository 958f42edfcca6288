package postgres

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/internal/storeutil"
)

// maxAttempts bounds the store's own retries of an append that ran in a
// transaction of its own (the pool, or a connection outside a transaction)
// and lost a race it can retry without the caller: nothing was committed.
const maxAttempts = 4

// prepared is an append ready for SQL: IDs drawn, metadata encoded,
// payloads sealed.
type prepared struct {
	appends []eventsource.StreamAppend // with IDs filled
	streams []string
	ids     []string
	types   []string
	svs     []int32
	data    [][]byte
	md      []pgtype.Text
	times   []pgtype.Timestamptz
	enc     []bool
	sidx    []int32 // 1-based stream index per event
	rank    []int32 // 1-based rank within its stream
	state   int16   // stateDeleted for a tombstone
	plain   [][]byte
}

// Append implements eventsource.Appender. With the pool (or a connection
// outside a transaction), one stream's append is one statement, which is
// its own transaction; several streams, or an Outbox, take a transaction.
// Bound to your transaction (In), everything runs in it: several streams
// or an Outbox in a savepoint, so that a conflict leaves your transaction
// usable.
//
// A conflict found without an error (the expected version, a deleted
// stream, a retry of stored events) leaves your transaction usable; a race
// PostgreSQL reports with an error (two transactions storing the same
// event ID at once, a serialization failure under REPEATABLE READ or
// SERIALIZABLE, a deadlock) aborts it, and the error matches
// eventsource.ErrConcurrency: retry the transaction. In a transaction of
// its own, the store retries such races itself.
//
// Appends of one stream must come in transaction order: a transaction that
// appends to a stream after a transaction numbered after it (one that
// first wrote later) committed to it is refused with a *ConcurrencyError
// whose Reason is "reordered", since the global log, ordered by
// transaction, would otherwise show the stream out of version order. It
// happens only to transactions that wrote something before appending to a
// contended stream; retry them.
func (s *Store) Append(ctx context.Context, appends ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	return s.appendState(ctx, appends, stateOpen)
}

func (s *Store) appendState(ctx context.Context, appends []eventsource.StreamAppend, state int16) ([]eventsource.AppendResult, error) {
	if err := eventsource.ValidateAppend(appends); err != nil {
		return nil, err
	}
	p, err := s.prepare(ctx, appends, state)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		res, err := s.try(ctx, p)
		var r *retry
		if errors.As(err, &r) {
			if !s.tx && attempt < maxAttempts && ctx.Err() == nil {
				continue
			}
			err = r.err
		}
		return res, err
	}
}

// retry marks an error the store may retry in a transaction of its own.
type retry struct{ err error }

func (r *retry) Error() string { return r.err.Error() }
func (r *retry) Unwrap() error { return r.err }

func (s *Store) prepare(ctx context.Context, appends []eventsource.StreamAppend, state int16) (*prepared, error) {
	n := 0
	for i := range appends {
		n += len(appends[i].Events)
	}
	p := &prepared{appends: make([]eventsource.StreamAppend, len(appends)), state: state,
		streams: make([]string, len(appends)), ids: make([]string, 0, n), types: make([]string, 0, n),
		svs: make([]int32, 0, n), data: make([][]byte, 0, n), md: make([]pgtype.Text, 0, n),
		times: make([]pgtype.Timestamptz, 0, n), enc: make([]bool, 0, n), sidx: make([]int32, 0, n), rank: make([]int32, 0, n)}
	var keys map[string]cipher.AEAD
	if s.aead != nil {
		var err error
		if keys, err = s.streamKeys(ctx, appends); err != nil {
			return nil, err
		}
		p.plain = make([][]byte, 0, n)
	}
	for i, a := range appends {
		p.streams[i] = a.StreamID
		evs := make([]eventsource.EventData, len(a.Events))
		for j, e := range a.Events {
			if s.cfg.MaxEventBytes > 0 && len(e.Data) > s.cfg.MaxEventBytes {
				return nil, fmt.Errorf("%w: stream %q, event %d: payload of %d bytes, limit %d (Config.MaxEventBytes)",
					eventsource.ErrInvalidEvent, a.StreamID, j, len(e.Data), s.cfg.MaxEventBytes)
			}
			if e.ID == "" {
				e.ID = broker.NewID()
			}
			evs[j] = e
			p.ids = append(p.ids, e.ID)
			p.types = append(p.types, e.Type)
			p.svs = append(p.svs, int32(e.SchemaVersion))
			p.sidx = append(p.sidx, int32(i+1))
			p.rank = append(p.rank, int32(j+1))
			var md pgtype.Text
			if len(e.Metadata) > 0 {
				b, err := json.Marshal(e.Metadata)
				if err != nil {
					return nil, fmt.Errorf("%w: stream %q, event %d: metadata: %v", eventsource.ErrInvalidEvent, a.StreamID, j, err)
				}
				md = pgtype.Text{String: string(b), Valid: true}
			}
			p.md = append(p.md, md)
			p.times = append(p.times, pgtype.Timestamptz{Time: e.Time, Valid: !e.Time.IsZero()})
			data := e.Data
			if keys != nil {
				p.plain = append(p.plain, e.Data)
				sealed, err := seal(keys[a.StreamID], e.Data, []byte(e.ID))
				if err != nil {
					return nil, err
				}
				data = sealed
			}
			p.data = append(p.data, data)
			p.enc = append(p.enc, keys != nil)
		}
		a.Events = evs
		p.appends[i] = a
	}
	return p, nil
}

// streamKeys gets or creates the data keys of the append's streams, in the
// store's DB (so a new key commits with the events).
func (s *Store) streamKeys(ctx context.Context, appends []eventsource.StreamAppend) (map[string]cipher.AEAD, error) {
	ids := make([]string, len(appends))
	fresh := make([][]byte, len(appends))
	for i, a := range appends {
		ids[i] = a.StreamID
		w, err := s.newWrappedKey(a.StreamID)
		if err != nil {
			return nil, err
		}
		fresh[i] = w
	}
	keys := make(map[string]cipher.AEAD, len(ids))
	// A key another transaction creates while this statement waits for it
	// is not in the statement's snapshot: read again.
	for attempt := 1; len(keys) < len(ids); attempt++ {
		rows, err := s.db.Query(ctx, s.sql.getKeys, ids, fresh)
		if err != nil {
			return nil, wrap(ctx, "get stream keys", err)
		}
		for rows.Next() {
			var id string
			var wrapped []byte
			var present bool
			if err := rows.Scan(&id, &wrapped, &present); err != nil {
				rows.Close()
				return nil, wrap(ctx, "get stream keys", err)
			}
			if wrapped == nil {
				rows.Close()
				return nil, fmt.Errorf("%w: %q", eventsource.ErrShredded, id)
			}
			a, err := s.unwrapKey(wrapped, id)
			if err != nil {
				rows.Close()
				return nil, err
			}
			keys[id] = a
		}
		if err := rows.Err(); err != nil {
			return nil, wrap(ctx, "get stream keys", err)
		}
		if attempt >= 3 && len(keys) < len(ids) {
			return nil, fmt.Errorf("eventsource/postgres: get stream keys: a key of %v keeps missing", ids)
		}
	}
	return keys, nil
}

// errPartial: the statement stored some streams and not others.
var errPartial = errors.New("partial append")

// try runs the append once.
func (s *Store) try(ctx context.Context, p *prepared) ([]eventsource.AppendResult, error) {
	if len(p.appends) == 1 && s.cfg.Outbox == nil {
		res, ok, err := s.exec(ctx, s.db, p)
		if err != nil {
			return nil, s.appendError(ctx, err)
		}
		if ok {
			return res, nil
		}
		return s.diagnose(ctx, p)
	}
	var res []eventsource.AppendResult
	err := s.atomically(ctx, func(db DB) error {
		var ok bool
		var err error
		if res, ok, err = s.exec(ctx, db, p); err != nil {
			return err
		}
		if !ok {
			return errPartial
		}
		return s.enqueue(ctx, db, p, res)
	})
	switch {
	case errors.Is(err, errPartial):
		return s.diagnose(ctx, p)
	case err != nil:
		return nil, s.appendError(ctx, err)
	}
	return res, nil
}

// atomically runs fn in a transaction: a savepoint of the caller's
// transaction, or a transaction of its own.
func (s *Store) atomically(ctx context.Context, fn func(DB) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	return tx.Commit(ctx)
}

// exec runs the append statement. ok reports that every stream was
// stored.
func (s *Store) exec(ctx context.Context, db DB, p *prepared) ([]eventsource.AppendResult, bool, error) {
	if len(p.appends) == 1 {
		a := &p.appends[0]
		args := []any{a.StreamID, int64(a.Expected), p.ids, p.types, p.svs, p.data, p.md, p.times, p.enc[0], p.state}
		q := s.sql.appendOne
		if s.notify {
			q = s.sql.appendOneNotify
			args = append(args, s.cfg.Channel)
		}
		rows, err := db.Query(ctx, q, args...)
		if err != nil {
			return nil, false, err
		}
		defer rows.Close()
		res := eventsource.AppendResult{StreamID: a.StreamID, Positions: make([]eventsource.Position, len(a.Events))}
		n := 0
		for rows.Next() {
			var version, pos int64
			var xid uint64
			if err := rows.Scan(&version, &pos, &xid); err != nil {
				return nil, false, err
			}
			if version > res.Version {
				res.Version = version
			}
			res.Positions[n] = eventsource.Position{Transaction: xid, Sequence: pos}
			n++
		}
		if err := rows.Err(); err != nil {
			return nil, false, err
		}
		if n == 0 {
			return nil, false, nil
		}
		if n != len(a.Events) {
			return nil, false, fmt.Errorf("eventsource/postgres: append to %q stored %d of %d events", a.StreamID, n, len(a.Events))
		}
		sortPositions(res.Positions)
		return []eventsource.AppendResult{res}, true, nil
	}
	expected := make([]int64, len(p.appends))
	counts := make([]int32, len(p.appends))
	states := make([]int16, len(p.appends))
	for i, a := range p.appends {
		expected[i], counts[i], states[i] = int64(a.Expected), int32(len(a.Events)), p.state
	}
	args := []any{p.streams, expected, counts, states, p.sidx, p.rank, p.ids, p.types, p.svs, p.data, p.md, p.times, p.enc}
	q := s.sql.appendMany
	if s.notify {
		q = s.sql.appendManyNtfy
		args = append(args, s.cfg.Channel)
	}
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	index := make(map[string]int, len(p.appends))
	results := make([]eventsource.AppendResult, len(p.appends))
	for i, a := range p.appends {
		index[a.StreamID] = i
		results[i] = eventsource.AppendResult{StreamID: a.StreamID, Positions: make([]eventsource.Position, 0, len(a.Events))}
	}
	for rows.Next() {
		var stream string
		var version, pos int64
		var xid uint64
		if err := rows.Scan(&stream, &version, &pos, &xid); err != nil {
			return nil, false, err
		}
		r := &results[index[stream]]
		r.Positions = append(r.Positions, eventsource.Position{Transaction: xid, Sequence: pos})
		r.Version = max(r.Version, version)
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	for i := range results {
		if len(results[i].Positions) != len(p.appends[i].Events) {
			return nil, false, nil
		}
		sortPositions(results[i].Positions)
	}
	return results, true, nil
}

func sortPositions(ps []eventsource.Position) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Before(ps[j-1]); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// appendError classifies an error of the append statement.
func (s *Store) appendError(ctx context.Context, err error) error {
	code, constraint := sqlState(err)
	switch {
	case code == "23505" && (constraint == s.t.name.Base()+"_event_id"):
		return &retry{fmt.Errorf("%w: another transaction stored one of these event IDs at the same time: %w",
			eventsource.ErrConcurrency, wrap(ctx, "append", err))}
	case code == "40001" || code == "40P01":
		return &retry{fmt.Errorf("%w: %w", eventsource.ErrConcurrency, wrap(ctx, "append", err))}
	}
	return wrap(ctx, "append", err)
}

// diagnose finds out why an append stored nothing: a retry of stored
// events (returned as a duplicate result), reused IDs, a stream that is
// deleted, archived or shredded, or a conflict.
func (s *Store) diagnose(ctx context.Context, p *prepared) ([]eventsource.AppendResult, error) {
	b := &pgx.Batch{}
	b.Queue(s.sql.diagStreams, p.streams)
	b.Queue(s.sql.diagEvents, p.ids)
	br := s.db.SendBatch(ctx, b)
	type streamRow struct {
		version   int64
		state     int16
		reordered bool
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, wrap(ctx, "append: diagnose", err)
	}
	streams := map[string]streamRow{}
	for rows.Next() {
		var id string
		var r streamRow
		if err := rows.Scan(&id, &r.version, &r.state, &r.reordered); err != nil {
			rows.Close()
			_ = br.Close()
			return nil, wrap(ctx, "append: diagnose", err)
		}
		streams[id] = r
	}
	rows.Close()
	stored := map[string]*eventsource.Record{}
	if rows, err = br.Query(); err == nil {
		for rows.Next() {
			r := &eventsource.Record{}
			if err := rows.Scan(&r.ID, &r.StreamID, &r.Version, &r.Position.Sequence, &r.Position.Transaction); err != nil {
				rows.Close()
				_ = br.Close()
				return nil, wrap(ctx, "append: diagnose", err)
			}
			stored[r.ID] = r
		}
		rows.Close()
		err = rows.Err()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, wrap(ctx, "append: diagnose", err)
	}
	if len(stored) > 0 {
		results := make([]eventsource.AppendResult, len(p.appends))
		for i := range p.appends {
			a := &p.appends[i]
			res := eventsource.AppendResult{StreamID: a.StreamID, Duplicate: true, Positions: make([]eventsource.Position, len(a.Events))}
			first := stored[a.Events[0].ID]
			for j, e := range a.Events {
				rec := stored[e.ID]
				if why := storeutil.DuplicateMismatch(a, j, rec, first); why != "" {
					return nil, fmt.Errorf("%w: %s", eventsource.ErrDuplicateEvent, why)
				}
				res.Positions[j] = rec.Position
				res.Version = rec.Version
			}
			results[i] = res
		}
		return results, nil
	}
	var race error
	for _, a := range p.appends {
		r := streams[a.StreamID]
		switch {
		case r.state == stateDeleted:
			return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamDeleted, a.StreamID)
		case r.state == stateArchived:
			return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamArchived, a.StreamID)
		case r.state == stateShredded:
			return nil, fmt.Errorf("%w: %q", eventsource.ErrShredded, a.StreamID)
		case !a.Expected.Matches(r.version):
			return nil, &eventsource.ConcurrencyError{StreamID: a.StreamID, Expected: a.Expected, Actual: r.version}
		case r.reordered:
			return nil, &eventsource.ConcurrencyError{StreamID: a.StreamID, Expected: a.Expected, Actual: r.version, Reason: "reordered"}
		}
		if race == nil {
			race = &eventsource.ConcurrencyError{StreamID: a.StreamID, Expected: a.Expected, Actual: r.version,
				Reason: "the stream changed while the append ran"}
		}
	}
	// Every stream matches now: the append lost a race (another transaction
	// created or changed a stream after its snapshot, or appended in a
	// transaction numbered after it). Run again, it will see the new state.
	return nil, &retry{race}
}

// enqueue writes the outbox messages of the appended events in db.
func (s *Store) enqueue(ctx context.Context, db DB, p *prepared, res []eventsource.AppendResult) error {
	if s.cfg.Outbox == nil {
		return nil
	}
	now := time.Now()
	msgs := make([]broker.Message, 0, len(p.ids))
	k := 0
	for i, a := range p.appends {
		first := res[i].Version - int64(len(a.Events)) + 1
		for j, e := range a.Events {
			if p.plain != nil {
				e.Data = p.plain[k]
			}
			k++
			if e.Time.IsZero() {
				e.Time = now
			}
			r := eventsource.Record{EventData: e, StreamID: a.StreamID, Version: first + int64(j), Position: res[i].Positions[j]}
			msgs = append(msgs, eventsource.ToMessage(s.topic(r), r))
		}
	}
	if err := s.cfg.Outbox.Enqueue(ctx, db, msgs...); err != nil {
		return fmt.Errorf("eventsource/postgres: append: enqueue into the outbox: %w", err)
	}
	return nil
}
