package memory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/internal/storeutil"
)

// Store is an in-memory event store. The zero value is not usable; call New.
// It is safe for concurrent use.
type Store struct {
	mu        sync.Mutex
	ended     chan struct{} // closed and replaced whenever a transaction ends
	nextTx    uint64
	nextSeq   int64
	streams   map[string]*stream
	log       []eventsource.Record // committed, in Position order
	ids       map[string]*eventsource.Record
	pending   map[string]*Tx // event ID -> open transaction that appended it
	open      map[uint64]*Tx // open transactions that have a number
	snapshots map[string]eventsource.Snapshot
	listeners map[*listener]struct{}
	now       func() time.Time
}

type listener struct{ wake func() }

type status int

const (
	statusOpen status = iota
	statusDeleted
	statusArchived
	statusShredded
)

type stream struct {
	version  int64
	lastTx   uint64
	status   status
	shredded bool
	events   []*eventsource.Record // committed, in version order, from the first kept version
	holder   *Tx                   // the open transaction that appended to it
}

var (
	_ eventsource.Store          = (*Store)(nil)
	_ eventsource.LogReader      = (*Store)(nil)
	_ eventsource.Lifecycle      = (*Store)(nil)
	_ eventsource.Shredder       = (*Store)(nil)
	_ eventsource.Notifier       = (*Store)(nil)
	_ eventsource.StallInspector = (*Store)(nil)
	_ eventsource.Store          = (*Tx)(nil)
)

// New returns an empty store.
func New() *Store {
	return &Store{
		ended:     make(chan struct{}),
		nextTx:    1,
		nextSeq:   1,
		streams:   map[string]*stream{},
		ids:       map[string]*eventsource.Record{},
		pending:   map[string]*Tx{},
		open:      map[uint64]*Tx{},
		snapshots: map[string]eventsource.Snapshot{},
		listeners: map[*listener]struct{}{},
		now:       time.Now,
	}
}

// Tx is a transaction of a memory store: its appends become visible, in
// every stream at once, when it commits, and vanish if it rolls back. It
// implements eventsource.Store, so a Repository can run in it
// (Repository.With); its reads see its own appends. A Tx is not safe for
// concurrent use.
type Tx struct {
	s       *Store
	number  uint64 // 0 until the first append
	started time.Time
	done    bool
	held    map[string]*stream
	created map[string]bool
	staged  []staged
}

type staged struct {
	st  *stream
	rec eventsource.Record
	// from the stream before this transaction's first append to it
	prevVersion int64
	prevStatus  status
}

// Begin starts a transaction.
func (s *Store) Begin() *Tx {
	return &Tx{s: s, started: s.now(), held: map[string]*stream{}}
}

// Append implements eventsource.Appender in a transaction of its own.
func (s *Store) Append(ctx context.Context, appends ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	tx := s.Begin()
	res, err := tx.Append(ctx, appends...)
	if err != nil {
		tx.Rollback()
		return nil, err
	}
	return res, tx.Commit()
}

// Append implements eventsource.Appender within the transaction. A failed
// append leaves the transaction as it was (its earlier appends stand).
func (tx *Tx) Append(ctx context.Context, appends ...eventsource.StreamAppend) ([]eventsource.AppendResult, error) {
	if err := eventsource.ValidateAppend(appends); err != nil {
		return nil, err
	}
	return tx.append(ctx, appends, statusOpen)
}

func (tx *Tx) append(ctx context.Context, appends []eventsource.StreamAppend, close status) ([]eventsource.AppendResult, error) {
	s := tx.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if tx.done {
		return nil, fmt.Errorf("eventsource/memory: transaction already ended")
	}
	if tx.number == 0 {
		// Numbered at its first write, like a PostgreSQL transaction.
		tx.number = s.nextTx
		s.nextTx++
		s.open[tx.number] = tx
	}
	// Take the streams in a fixed order, waiting for other transactions
	// that hold them (or that appended one of these event IDs).
	order := make([]int, len(appends))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return appends[order[a]].StreamID < appends[order[b]].StreamID })
	for {
		blocked := tx.blockedBy(appends)
		if blocked == nil {
			break
		}
		ch := s.ended
		s.mu.Unlock()
		select {
		case <-ch:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return nil, fmt.Errorf("eventsource/memory: append: waiting for transaction %d: %w", blocked.number, ctx.Err())
		}
		if tx.done {
			return nil, fmt.Errorf("eventsource/memory: transaction already ended")
		}
	}
	if res, ok, err := tx.duplicate(appends); ok || err != nil {
		return res, err
	}
	for _, i := range order {
		a := &appends[i]
		st := tx.streamFor(a.StreamID)
		switch {
		case st != nil && st.status == statusDeleted:
			return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamDeleted, a.StreamID)
		case st != nil && st.status == statusArchived:
			return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamArchived, a.StreamID)
		case st != nil && (st.shredded || st.status == statusShredded):
			return nil, fmt.Errorf("%w: %q", eventsource.ErrShredded, a.StreamID)
		}
		var version int64
		if st != nil {
			version = st.version
		}
		if !a.Expected.Matches(version) {
			return nil, &eventsource.ConcurrencyError{StreamID: a.StreamID, Expected: a.Expected, Actual: version}
		}
		if st != nil && st.lastTx > tx.number {
			return nil, &eventsource.ConcurrencyError{StreamID: a.StreamID, Expected: a.Expected, Actual: version, Reason: "reordered"}
		}
	}
	// Every check passed: stage the events.
	now := s.now()
	results := make([]eventsource.AppendResult, len(appends))
	for i := range appends {
		a := &appends[i]
		st := tx.streamFor(a.StreamID)
		if st == nil {
			st = &stream{}
			s.streams[a.StreamID] = st
			if tx.created == nil {
				tx.created = map[string]bool{}
			}
			tx.created[a.StreamID] = true
		}
		if tx.held[a.StreamID] == nil {
			tx.held[a.StreamID] = st
			st.holder = tx
		}
		prevVersion, prevStatus := st.version, st.status
		res := eventsource.AppendResult{StreamID: a.StreamID, Positions: make([]eventsource.Position, len(a.Events))}
		for j, e := range a.Events {
			if e.ID == "" {
				e.ID = broker.NewID()
			}
			if e.Time.IsZero() {
				e.Time = now
			}
			e.Data = slices.Clone(e.Data)
			e.Metadata = cloneMetadata(e.Metadata)
			st.version++
			rec := eventsource.Record{EventData: e, StreamID: a.StreamID, Version: st.version,
				Position: eventsource.Position{Transaction: tx.number, Sequence: s.nextSeq}}
			s.nextSeq++
			s.pending[e.ID] = tx
			tx.staged = append(tx.staged, staged{st: st, rec: rec, prevVersion: prevVersion, prevStatus: prevStatus})
			res.Positions[j] = rec.Position
		}
		if close != statusOpen {
			st.status = close
		}
		res.Version = st.version
		results[i] = res
	}
	return results, nil
}

// streamFor returns the stream as tx sees it (its own staged appends
// included), or nil.
func (tx *Tx) streamFor(id string) *stream { return tx.s.streams[id] }

// blockedBy returns an open transaction that tx must wait for: one holding
// a stream of appends, or one that appended one of its event IDs.
func (tx *Tx) blockedBy(appends []eventsource.StreamAppend) *Tx {
	for i := range appends {
		if st := tx.s.streams[appends[i].StreamID]; st != nil && st.holder != nil && st.holder != tx {
			return st.holder
		}
		for _, e := range appends[i].Events {
			if o := tx.s.pending[e.ID]; e.ID != "" && o != nil && o != tx {
				return o
			}
		}
	}
	return nil
}

// duplicate reports whether the append's events are already stored: ok
// with the stored results when the whole append is, an ErrDuplicateEvent
// when some of its IDs are stored otherwise.
func (tx *Tx) duplicate(appends []eventsource.StreamAppend) ([]eventsource.AppendResult, bool, error) {
	s := tx.s
	any := false
	for i := range appends {
		for _, e := range appends[i].Events {
			if e.ID != "" && (s.ids[e.ID] != nil || s.pending[e.ID] == tx) {
				any = true
			}
		}
	}
	if !any {
		return nil, false, nil
	}
	results := make([]eventsource.AppendResult, len(appends))
	for i := range appends {
		a := &appends[i]
		res := eventsource.AppendResult{StreamID: a.StreamID, Duplicate: true, Positions: make([]eventsource.Position, len(a.Events))}
		var first *eventsource.Record
		for j, e := range a.Events {
			rec := s.ids[e.ID]
			if rec == nil && s.pending[e.ID] == tx {
				rec = tx.stagedRecord(e.ID)
			}
			if j == 0 {
				first = rec
			}
			if why := storeutil.DuplicateMismatch(a, j, rec, first); why != "" {
				return nil, false, fmt.Errorf("%w: %s", eventsource.ErrDuplicateEvent, why)
			}
			res.Positions[j] = rec.Position
			res.Version = rec.Version
		}
		results[i] = res
	}
	return results, true, nil
}

func (tx *Tx) stagedRecord(id string) *eventsource.Record {
	for i := range tx.staged {
		if tx.staged[i].rec.ID == id {
			return &tx.staged[i].rec
		}
	}
	return nil
}

// Commit makes the transaction's appends visible and ends it.
func (tx *Tx) Commit() error {
	s := tx.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if tx.done {
		return fmt.Errorf("eventsource/memory: transaction already ended")
	}
	for i := range tx.staged {
		sg := &tx.staged[i]
		rec := sg.rec
		p := &rec
		sg.st.events = append(sg.st.events, p)
		sg.st.lastTx = tx.number
		s.ids[rec.ID] = p
		delete(s.pending, rec.ID)
		s.insertLog(rec)
	}
	notify := len(tx.staged) > 0
	tx.end()
	if notify {
		for l := range s.listeners {
			l.wake()
		}
	}
	return nil
}

// Rollback discards the transaction's appends and ends it. Rolling back an
// ended transaction does nothing.
func (tx *Tx) Rollback() {
	s := tx.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if tx.done {
		return
	}
	// Undo in reverse, so each stream returns to its state before tx.
	for i := len(tx.staged) - 1; i >= 0; i-- {
		sg := &tx.staged[i]
		sg.st.version, sg.st.status = sg.prevVersion, sg.prevStatus
		delete(s.pending, sg.rec.ID)
	}
	for id := range tx.created {
		delete(s.streams, id)
	}
	tx.end()
}

// end releases tx's streams and wakes waiters. s.mu is held.
func (tx *Tx) end() {
	s := tx.s
	tx.done = true
	for _, st := range tx.held {
		if st.holder == tx {
			st.holder = nil
		}
	}
	if tx.number != 0 {
		delete(s.open, tx.number)
	}
	close(s.ended)
	s.ended = make(chan struct{})
}

func (s *Store) insertLog(rec eventsource.Record) {
	i, _ := slices.BinarySearchFunc(s.log, rec.Position, func(r eventsource.Record, p eventsource.Position) int {
		return r.Position.Compare(p)
	})
	s.log = slices.Insert(s.log, i, rec)
}

func cloneMetadata(m eventsource.Metadata) eventsource.Metadata {
	if m == nil {
		return nil
	}
	c := make(eventsource.Metadata, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// ReadStream implements eventsource.StreamReader on committed events.
func (s *Store) ReadStream(ctx context.Context, streamID string, opts eventsource.ReadOptions) iter.Seq2[eventsource.Record, error] {
	return s.readStream(ctx, nil, streamID, opts)
}

// ReadStream implements eventsource.StreamReader: committed events and the
// transaction's own appends.
func (tx *Tx) ReadStream(ctx context.Context, streamID string, opts eventsource.ReadOptions) iter.Seq2[eventsource.Record, error] {
	return tx.s.readStream(ctx, tx, streamID, opts)
}

func (s *Store) readStream(ctx context.Context, tx *Tx, streamID string, opts eventsource.ReadOptions) iter.Seq2[eventsource.Record, error] {
	return func(yield func(eventsource.Record, error) bool) {
		if err := eventsource.ValidateStreamID(streamID); err != nil {
			yield(eventsource.Record{}, err)
			return
		}
		if err := ctx.Err(); err != nil {
			yield(eventsource.Record{}, err)
			return
		}
		recs, err := s.streamRecords(tx, streamID)
		if err != nil {
			yield(eventsource.Record{}, err)
			return
		}
		for _, r := range selectStream(recs, opts) {
			if opts.Minimal {
				r.Metadata, r.Time, r.Position = nil, time.Time{}, eventsource.Position{}
			}
			if !yield(r, nil) {
				return
			}
		}
	}
}

// streamRecords copies the stream's records as tx (or a reader outside any
// transaction) sees them.
func (s *Store) streamRecords(tx *Tx, streamID string) ([]eventsource.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamID]
	var out []eventsource.Record
	deleted := false
	if st != nil {
		deleted = st.status == statusDeleted
		out = make([]eventsource.Record, 0, len(st.events))
		for _, r := range st.events {
			if !eventsource.IsMarker(r.Type) {
				out = append(out, *r)
			}
		}
		if tx != nil {
			for _, sg := range tx.staged {
				if sg.st == st && !eventsource.IsMarker(sg.rec.Type) {
					out = append(out, sg.rec)
				}
			}
		} else if st.holder != nil {
			// The holder's tombstone is not visible outside it.
			deleted = st.holder.deletedBefore(st)
		}
	}
	if deleted {
		return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamDeleted, streamID)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID)
	}
	for i := range out {
		out[i].Data = slices.Clone(out[i].Data)
		out[i].Metadata = cloneMetadata(out[i].Metadata)
	}
	return out, nil
}

// deletedBefore reports whether st was deleted before tx appended to it.
func (tx *Tx) deletedBefore(st *stream) bool {
	for _, sg := range tx.staged {
		if sg.st == st {
			return sg.prevStatus == statusDeleted
		}
	}
	return st.status == statusDeleted
}

// ReadLog implements eventsource.LogReader.
func (s *Store) ReadLog(ctx context.Context, q eventsource.LogQuery) (eventsource.Page, error) {
	if err := ctx.Err(); err != nil {
		return eventsource.Page{}, err
	}
	if q.Limit <= 0 {
		q.Limit = eventsource.DefaultLogLimit
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fence := s.nextTx
	for n := range s.open {
		fence = min(fence, n)
	}
	if q.After.Transaction > s.nextTx || q.After.Sequence >= s.nextSeq {
		return eventsource.Page{}, fmt.Errorf("%w: checkpoint %v, but the store has assigned transactions below %d and sequence numbers below %d",
			eventsource.ErrCheckpointAhead, q.After, s.nextTx, s.nextSeq)
	}
	i, _ := slices.BinarySearchFunc(s.log, q.After, func(r eventsource.Record, p eventsource.Position) int {
		if r.Position.Compare(p) <= 0 {
			return -1
		}
		return 1
	})
	page := eventsource.Page{Fence: fence}
	for ; i < len(s.log) && s.log[i].Position.Transaction < fence && len(page.Records) < q.Limit; i++ {
		if r := s.log[i]; q.Filter.Match(&r) {
			r.Data = slices.Clone(r.Data)
			r.Metadata = cloneMetadata(r.Metadata)
			page.Records = append(page.Records, r)
		}
	}
	full := len(page.Records) >= q.Limit
	page.Next = q.After
	if n := len(page.Records); n > 0 {
		page.Next = page.Records[n-1].Position
	}
	if !full {
		if f := (eventsource.Position{Transaction: fence}); page.Next.Before(f) {
			page.Next = f
		}
	}
	j, _ := slices.BinarySearchFunc(s.log, eventsource.Position{Transaction: fence}, func(r eventsource.Record, p eventsource.Position) int {
		return cmp.Compare(r.Position.Transaction, p.Transaction)
	})
	page.HeldBack = j < len(s.log)
	return page, nil
}

// SaveSnapshot implements eventsource.SnapshotStore.
func (s *Store) SaveSnapshot(ctx context.Context, snap eventsource.Snapshot) error {
	if err := eventsource.ValidateStreamID(snap.StreamID); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[snap.StreamID]; st != nil && (st.shredded || st.status == statusDeleted) {
		return nil // nothing to cache for a shredded or deleted stream
	}
	snap.Data = slices.Clone(snap.Data)
	s.snapshots[snap.StreamID] = snap
	return nil
}

// LoadSnapshot implements eventsource.SnapshotStore.
func (s *Store) LoadSnapshot(ctx context.Context, streamID string) (eventsource.Snapshot, bool, error) {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return eventsource.Snapshot{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, ok := s.snapshots[streamID]
	snap.Data = slices.Clone(snap.Data)
	return snap, ok, nil
}

// SaveSnapshot implements eventsource.SnapshotStore through the store:
// snapshots are a cache and never part of a transaction.
func (tx *Tx) SaveSnapshot(ctx context.Context, snap eventsource.Snapshot) error {
	return tx.s.SaveSnapshot(ctx, snap)
}

// LoadSnapshot implements eventsource.SnapshotStore through the store.
func (tx *Tx) LoadSnapshot(ctx context.Context, streamID string) (eventsource.Snapshot, bool, error) {
	return tx.s.LoadSnapshot(ctx, streamID)
}

// DeleteStream implements eventsource.Lifecycle.
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
	tx := s.Begin()
	res, err := tx.append(ctx, a, statusDeleted)
	if err != nil {
		tx.Rollback()
		return eventsource.AppendResult{}, storeutil.DeleteError(err, expected)
	}
	if err := tx.Commit(); err != nil {
		return eventsource.AppendResult{}, err
	}
	s.mu.Lock()
	delete(s.snapshots, streamID)
	s.mu.Unlock()
	return res[0], nil
}

// TruncateStream implements eventsource.Lifecycle.
func (s *Store) TruncateStream(ctx context.Context, streamID string, before int64) (int, error) {
	if err := eventsource.ValidateStreamID(streamID); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamID]
	if st == nil || len(st.events) == 0 && st.version == 0 {
		return 0, fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID)
	}
	n := 0
	for n < len(st.events)-1 && st.events[n].Version < before { // never the last event
		n++
	}
	gone := map[eventsource.Position]bool{}
	for _, r := range st.events[:n] {
		gone[r.Position] = true
	}
	st.events = slices.Delete(st.events, 0, n)
	s.log = slices.DeleteFunc(s.log, func(r eventsource.Record) bool { return gone[r.Position] })
	return n, nil
}

// ArchiveStream implements eventsource.Lifecycle: the marker is appended
// (waiting for a transaction appending to the stream, as the row lock
// would), and the stream's other events leave the global log.
func (s *Store) ArchiveStream(ctx context.Context, streamID string) error {
	a := []eventsource.StreamAppend{{StreamID: streamID, Expected: eventsource.StreamExists,
		Events: []eventsource.EventData{{Type: eventsource.TypeStreamArchived, SchemaVersion: 1}}}}
	if err := eventsource.ValidateAppend(a); err != nil {
		return err
	}
	tx := s.Begin()
	res, err := tx.append(ctx, a, statusArchived)
	if err != nil {
		tx.Rollback()
		var ce *eventsource.ConcurrencyError
		switch {
		case errors.Is(err, eventsource.ErrStreamArchived):
			return nil
		case errors.As(err, &ce):
			return fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, streamID)
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	marker := res[0].Positions[0]
	s.log = slices.DeleteFunc(s.log, func(r eventsource.Record) bool { return r.StreamID == streamID && r.Position != marker })
	return nil
}

// ShredStream implements eventsource.Shredder: an open stream gets the
// marker, then the stream's payloads and snapshot are forgotten.
func (s *Store) ShredStream(ctx context.Context, streamID string) error {
	a := []eventsource.StreamAppend{{StreamID: streamID, Expected: eventsource.AnyVersion,
		Events: []eventsource.EventData{{Type: eventsource.TypeStreamShredded, SchemaVersion: 1}}}}
	if err := eventsource.ValidateAppend(a); err != nil {
		return err
	}
	tx := s.Begin()
	_, err := tx.append(ctx, a, statusShredded)
	switch {
	case err == nil:
		if err := tx.Commit(); err != nil {
			return err
		}
	case errors.Is(err, eventsource.ErrShredded), errors.Is(err, eventsource.ErrStreamDeleted), errors.Is(err, eventsource.ErrStreamArchived):
		tx.Rollback()
	default:
		tx.Rollback()
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamID]
	st.shredded = true
	builtin := func(typ string) bool { return typ == eventsource.TypeStreamDeleted || eventsource.IsMarker(typ) }
	for _, r := range st.events {
		if !builtin(r.Type) {
			r.Data, r.Shredded = nil, true
		}
	}
	for i := range s.log {
		if s.log[i].StreamID == streamID && !builtin(s.log[i].Type) {
			s.log[i].Data, s.log[i].Shredded = nil, true
		}
	}
	delete(s.snapshots, streamID)
	return nil
}

// Listen implements eventsource.Notifier: wake is called after every commit
// that appended events, until ctx is done.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	l := &listener{wake: wake}
	s.mu.Lock()
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	wake()
	<-ctx.Done()
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
	return nil
}

// Blocker implements eventsource.StallInspector: the open transaction
// numbered fence, with its start time.
func (s *Store) Blocker(ctx context.Context, fence uint64) (eventsource.Blocker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := eventsource.Blocker{Transaction: fence}
	if tx := s.open[fence]; tx != nil {
		b.Started = tx.started
		b.State = "open"
	}
	return b, nil
}

// Number returns the transaction's number (its Position.Transaction), 0
// until it first appends.
func (tx *Tx) Number() uint64 {
	tx.s.mu.Lock()
	defer tx.s.mu.Unlock()
	return tx.number
}

// selectStream applies opts to a stream's records (in version order).
func selectStream(recs []eventsource.Record, opts eventsource.ReadOptions) []eventsource.Record {
	last := len(recs)
	if opts.AsOfVersion > 0 {
		last = sort.Search(len(recs), func(i int) bool { return recs[i].Version > opts.AsOfVersion })
	}
	if !opts.AsOfTime.IsZero() {
		n := 0
		for i := range recs[:last] {
			if !recs[i].Time.After(opts.AsOfTime) {
				n = i + 1
			}
		}
		last = n
	}
	recs = recs[:last]
	if opts.Backward {
		if opts.From > 0 {
			recs = recs[:sort.Search(len(recs), func(i int) bool { return recs[i].Version > opts.From })]
		}
		slices.Reverse(recs)
	} else if opts.From > 0 {
		recs = recs[sort.Search(len(recs), func(i int) bool { return recs[i].Version >= opts.From }):]
	}
	if opts.Limit > 0 && len(recs) > opts.Limit {
		recs = recs[:opts.Limit]
	}
	return recs
}
