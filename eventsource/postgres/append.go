package postgres

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"reflect"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/internal/storeutil"
)

// maxAttempts bounds the store's own retries of an append that lost a race
// it can retry without the caller: the statement stored nothing (it either
// ran in a transaction of its own, or raised no error in the caller's).
const maxAttempts = 4

// prepared is an append ready for SQL: IDs drawn, metadata encoded,
// payloads sealed.
type prepared struct {
	appends []eventsource.StreamAppend // with IDs filled; Data in plain text
	cols    []columns                  // per stream
}

// columns are one stream's events as statement parameters.
type columns struct {
	ids   []string
	types []string
	svs   []int32
	data  [][]byte
	md    []string    // JSON, "" for none
	times []time.Time // nil when every event takes the server's clock
	enc   bool
}

func (p *prepared) streamIDs() []string {
	ids := make([]string, len(p.appends))
	for i, a := range p.appends {
		ids[i] = a.StreamID
	}
	return ids
}

func (p *prepared) allIDs() []string {
	var ids []string
	for _, c := range p.cols {
		ids = append(ids, c.ids...)
	}
	return ids
}

// Append implements eventsource.Appender. One stream's append is one
// statement. With the pool (or a connection outside a transaction) it is
// its own transaction; several streams, or an Outbox, take a transaction
// (their statements pipelined in one round trip). Bound to your
// transaction (In), everything runs in it: several streams or an Outbox in
// a savepoint, so that a conflict leaves your transaction usable.
//
// A conflict found without an error (the expected version, a closed
// stream, a retry of stored events) leaves your transaction usable; a race
// PostgreSQL reports with an error (a serialization failure under
// REPEATABLE READ or SERIALIZABLE, a deadlock between appends to several
// streams in opposite orders, two transactions storing the same event ID
// at once) aborts it, and the error matches eventsource.ErrConcurrency:
// retry the transaction. Races that store nothing and raise nothing (an
// AnyVersion append losing the next version to a concurrent one) are
// retried by the store itself.
//
// Appends of one stream must come in transaction order: a transaction that
// appends to a stream after a transaction numbered after it (one that
// first wrote later) committed to it is refused with a *ConcurrencyError
// whose Reason is "reordered", since the global log, ordered by
// transaction, would otherwise show the stream out of version order. It
// happens only to transactions that wrote something before appending to a
// contended stream; retry them.
func (s *Store) Append(ctx context.Context, appends ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	if err := eventsource.ValidateAppend(appends); err != nil {
		return nil, err
	}
	p, err := s.prepare(ctx, appends)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		res, err := s.try(ctx, p)
		if err == nil && s.coalesced() && !res[0].Duplicate {
			s.poker.poke()
		}
		var r *retry
		if errors.As(err, &r) {
			if (!s.tx || r.clean) && attempt < maxAttempts && ctx.Err() == nil {
				continue
			}
			err = r.err
		}
		return res, err
	}
}

// coalesced reports whether the append's notification is sent after it
// (it commits on its own) rather than from its statement.
func (s *Store) coalesced() bool { return s.poker != nil && !s.tx }

// statementNotifies reports whether the append statement sends the
// notification itself.
func (s *Store) statementNotifies() bool { return s.notify && !s.coalesced() }

// retry marks an error the store may retry: in a transaction of its own
// always, in the caller's when clean (nothing failed in it).
type retry struct {
	err   error
	clean bool
}

func (r *retry) Error() string { return r.err.Error() }
func (r *retry) Unwrap() error { return r.err }

func (s *Store) prepare(ctx context.Context, appends []eventsource.StreamAppend) (*prepared, error) {
	p := &prepared{appends: make([]eventsource.StreamAppend, len(appends)), cols: make([]columns, len(appends))}
	var keys map[string]cipher.AEAD
	if s.aead != nil {
		var err error
		if keys, err = s.streamKeys(ctx, appends); err != nil {
			return nil, err
		}
	}
	for i, a := range appends {
		n := len(a.Events)
		// The library's own events (tombstones, markers) carry no payload
		// and stay readable after shredding.
		enc := keys != nil && !(n == 1 && builtin(a.Events[0].Type))
		c := columns{ids: make([]string, n), types: make([]string, n), svs: make([]int32, n), data: make([][]byte, n),
			md: make([]string, n), enc: enc}
		evs := make([]eventsource.EventData, n)
		for j, e := range a.Events {
			if s.cfg.MaxEventBytes > 0 && len(e.Data) > s.cfg.MaxEventBytes {
				return nil, fmt.Errorf("%w: stream %q, event %d: payload of %d bytes, limit %d (Config.MaxEventBytes)",
					eventsource.ErrInvalidEvent, a.StreamID, j, len(e.Data), s.cfg.MaxEventBytes)
			}
			if e.ID == "" {
				e.ID = broker.NewID()
			}
			evs[j] = e
			c.ids[j], c.types[j], c.svs[j] = e.ID, e.Type, int32(e.SchemaVersion)
			if len(e.Metadata) > 0 {
				// Events of one append usually share one metadata map (the
				// context's): encode it once.
				if j > 0 && len(a.Events[j-1].Metadata) > 0 &&
					reflect.ValueOf(e.Metadata).Pointer() == reflect.ValueOf(a.Events[j-1].Metadata).Pointer() {
					c.md[j] = c.md[j-1]
				} else {
					c.md[j] = string(storeutil.AppendMetadataJSON(nil, e.Metadata))
				}
			}
			if !e.Time.IsZero() && c.times == nil {
				// Events without a time get the client's clock when others
				// in the append have one.
				now := time.Now()
				c.times = make([]time.Time, n)
				for k := range c.times {
					c.times[k] = now
				}
			}
			if c.times != nil && !e.Time.IsZero() {
				c.times[j] = e.Time
			}
			c.data[j] = e.Data
			if enc {
				sealed, err := seal(keys[a.StreamID], e.Data, []byte(e.ID))
				if err != nil {
					return nil, err
				}
				c.data[j] = sealed
			}
		}
		a.Events = evs
		p.appends[i], p.cols[i] = a, c
	}
	return p, nil
}

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

// builtin reports the library's own event types.
func builtin(typ string) bool {
	return typ == eventsource.TypeStreamDeleted || eventsource.IsMarker(typ)
}

// errPartial: the statements stored some streams and not others.
var errPartial = errors.New("partial append")

// try runs the append once.
func (s *Store) try(ctx context.Context, p *prepared) ([]eventsource.AppendResult, error) {
	if len(p.appends) == 1 && s.cfg.Outbox == nil {
		res, ok, err := s.exec(ctx, s.db, p)
		if err != nil {
			return s.appendError(ctx, err, p, s.tx)
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
		return s.appendError(ctx, err, p, false) // the savepoint or transaction was rolled back
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

// args returns the parameters of stream i's append statement and picks
// the statement.
func (s *Store) args(p *prepared, i int) (string, []any) {
	a, c := &p.appends[i], &p.cols[i]
	n := len(a.Events)
	args := make([]any, 0, 10)
	args = append(args, a.StreamID, int64(a.Expected), c.enc)
	many := 0
	if n == 1 {
		var at pgtype.Timestamptz
		if c.times != nil {
			at = pgtype.Timestamptz{Time: c.times[0], Valid: true}
		}
		args = append(args, c.ids[0], c.types[0], c.svs[0], c.data[0], c.md[0], at)
	} else {
		many = 1
		args = append(args, c.ids, c.types, c.svs, c.data, c.md, c.times)
	}
	notify := 0
	if s.statementNotifies() {
		notify = 1
		args = append(args, s.cfg.Channel)
	}
	return s.sql.append[kindOf(int64(a.Expected))][many][notify], args
}

// exec runs the append statements, one per stream (pipelined in one round
// trip when several). ok reports that every stream was stored.
func (s *Store) exec(ctx context.Context, db DB, p *prepared) ([]eventsource.AppendResult, bool, error) {
	results := make([]eventsource.AppendResult, len(p.appends))
	if len(p.appends) == 1 {
		q, args := s.args(p, 0)
		rows, err := db.Query(ctx, q, args...)
		if err != nil {
			return nil, false, err
		}
		if results[0], err = scanAppend(rows, p.appends[0].StreamID, len(p.appends[0].Events)); err != nil {
			return nil, false, err
		}
		return results, len(results[0].Positions) == len(p.appends[0].Events), nil
	}
	b := &pgx.Batch{}
	for i := range p.appends {
		q, args := s.args(p, i)
		b.Queue(q, args...)
	}
	br := db.SendBatch(ctx, b)
	ok := true
	for i := range p.appends {
		rows, err := br.Query()
		if err == nil {
			results[i], err = scanAppend(rows, p.appends[i].StreamID, len(p.appends[i].Events))
		}
		if err != nil {
			_ = br.Close()
			return nil, false, err
		}
		ok = ok && len(results[i].Positions) == len(p.appends[i].Events)
	}
	if err := br.Close(); err != nil {
		return nil, false, err
	}
	return results, ok, nil
}

// scanAppend reads an append statement's rows: the stored events'
// versions and positions, one row per event, or for several events one
// row holding the last version, every position and the transaction.
func scanAppend(rows pgx.Rows, stream string, n int) (eventsource.AppendResult, error) {
	defer rows.Close()
	res := eventsource.AppendResult{StreamID: stream}
	for rows.Next() {
		var version int64
		var xid uint64
		if n > 1 {
			var pos []int64
			if err := rows.Scan(&version, &pos, &xid); err != nil {
				return res, err
			}
			res.Version = version
			res.Positions = make([]eventsource.Position, len(pos))
			for i, p := range pos {
				res.Positions[i] = eventsource.Position{Transaction: xid, Sequence: p}
			}
			continue
		}
		var pos int64
		if err := rows.Scan(&version, &pos, &xid); err != nil {
			return res, err
		}
		res.Version = version
		res.Positions = append(res.Positions, eventsource.Position{Transaction: xid, Sequence: pos})
	}
	return res, rows.Err()
}

// appendError classifies an error of the append statement. A unique
// violation of an event ID is diagnosed against what is committed (through
// the pool: the statement's transaction may be aborted): a retry of a
// committed append, which is the duplicate result unless the caller's
// transaction was aborted; IDs reused otherwise (ErrDuplicateEvent); or a
// twin append still in flight, to be retried.
func (s *Store) appendError(ctx context.Context, err error, p *prepared, aborted bool) ([]eventsource.AppendResult, error) {
	code, constraint := sqlState(err)
	switch {
	case code == "23505" && constraint == s.t.name.Base()+"_event_id":
		res, derr := s.In(s.pool).diagnose(ctx, p)
		var r *retry
		switch {
		case derr == nil && !aborted:
			return res, nil
		case derr == nil || errors.As(derr, &r) || errors.Is(derr, eventsource.ErrConcurrency):
			return nil, &retry{err: fmt.Errorf("%w: another transaction stored these event IDs at the same time: %w",
				eventsource.ErrConcurrency, wrap(ctx, "append", err))}
		case errors.Is(derr, eventsource.ErrDuplicateEvent):
			return nil, derr
		}
		return nil, wrap(ctx, "append", err)
	case code == "23505" && constraint == s.t.name.Base()+"_pkey",
		code == "40001", code == "40P01":
		return nil, &retry{err: fmt.Errorf("%w: %w", eventsource.ErrConcurrency, wrap(ctx, "append", err))}
	}
	return nil, wrap(ctx, "append", err)
}

func (s *Store) diagnose(ctx context.Context, p *prepared) ([]eventsource.AppendResult, error) {
	b := &pgx.Batch{}
	b.Queue(s.sql.diagStreams, p.streamIDs())
	b.Queue(s.sql.diagEvents, p.allIDs())
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
		if err := rows.Scan(&id, &r.state, &r.version, &r.reordered); err != nil {
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
	// appended after its snapshot was taken). Run again, it will see the new
	// state: no statement failed, so even in the caller's transaction.
	return nil, &retry{err: race, clean: true}
}

func (s *Store) enqueue(ctx context.Context, db DB, p *prepared, res []eventsource.AppendResult) error {
	if s.cfg.Outbox == nil {
		return nil
	}
	now := time.Now()
	var msgs []broker.Message
	for i, a := range p.appends {
		first := res[i].Version - int64(len(a.Events)) + 1
		for j, e := range a.Events {
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
