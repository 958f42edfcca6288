// Package memory implements the saga ports in process: Store (instances,
// history, timers and an outbox), ParticipantStore and FlowStore. It keeps
// the semantics of saga/postgres (optimistic concurrency on revisions,
// claims that exclude other writers, messages published at least once in
// commit order after the commit, one record per message ID) and passes the
// same suite, saga/sagatest, so examples and unit tests of sagas need no
// database. Nothing survives the process; local steps and participant
// functions get a saga.Tx whose only effect is AfterCommit.
//
// Import it as sagamem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import sagamem "github.com/steadfast-go/steadfast/saga/memory"
package memory

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/internal/sagastore"
)

// Config configures the memory stores.
type Config struct {
	// Publisher receives the messages that committed transactions
	// enqueued (commands, replies, park events), in commit order, at least
	// once. Required.
	Publisher broker.Publisher
	// Backoff spaces publish attempts after a failure. Zero value: 100ms
	// doubling up to 30s.
	Backoff broker.Backoff
	// Logger receives publish failures. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) check(what string) (Config, error) {
	if c.Publisher == nil {
		return c, fmt.Errorf("%w: saga/memory: %s: nil Publisher", saga.ErrInvalidConfig, what)
	}
	if err := c.Backoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: saga/memory: %s: %v", saga.ErrInvalidConfig, what, err)
	}
	c.Logger = telemetry.Logger(c.Logger)
	return c, nil
}

// Store is an in-process saga.Store. Create it with New; Close it to stop
// its outbox.
type Store struct {
	out *outbox

	mu        sync.Mutex
	rows      map[string]*row
	listeners map[int]func()
	nextL     int
}

type row struct {
	inst    saga.Instance
	history []saga.Event
	msgIDs  map[string]bool
	claim   *tx // the ClaimDue transaction holding it, if any
}

var (
	_ saga.Store    = (*Store)(nil)
	_ saga.Notifier = (*Store)(nil)
)

// New returns an empty store.
func New(cfg Config) (*Store, error) {
	cfg, err := cfg.check("store")
	if err != nil {
		return nil, err
	}
	return &Store{out: newOutbox(cfg.Publisher, cfg.Backoff, cfg.Logger), rows: map[string]*row{},
		listeners: map[int]func(){}}, nil
}

// Close stops publishing; messages not yet published are dropped.
func (s *Store) Close() error {
	s.out.close()
	return nil
}

// Pending counts committed messages not yet accepted by the publisher.
func (s *Store) Pending() int { return s.out.pending() }

// Flush waits until every message committed so far was published.
func (s *Store) Flush(ctx context.Context) error { return s.out.flush(ctx) }

func clone(in saga.Instance) saga.Instance {
	in.Data = slices.Clone(in.Data)
	return in
}

// Begin implements saga.Store.
func (s *Store) Begin(ctx context.Context) (saga.StoreTx, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("saga/memory: begin: %w", err)
	}
	return &tx{s: s}, nil
}

// tx buffers its writes and applies them at Commit, under the store's
// lock, if every instance it saves still has the revision it was loaded at.
type tx struct {
	s      *Store
	ended  bool
	afters []func()
	writes []write
	claims []*row
}

type write struct {
	create bool
	c      saga.Change
}

func (t *tx) AfterCommit(f func()) { t.afters = append(t.afters, f) }

func (t *tx) Load(ctx context.Context, id, messageID string) (saga.Instance, bool, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	r := t.s.rows[id]
	if r == nil {
		return saga.Instance{}, false, fmt.Errorf("saga/memory: load %s: %w", id, saga.ErrNotFound)
	}
	return clone(r.inst), messageID != "" && r.msgIDs[messageID], nil
}

func (t *tx) Create(ctx context.Context, c saga.Change) (bool, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if t.s.rows[c.Instance.ID] != nil {
		return false, nil
	}
	t.writes = append(t.writes, write{create: true, c: cloneChange(c)})
	return true, nil
}

func (t *tx) Save(ctx context.Context, c saga.Change) error {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()
	if err := t.check(write{c: c}); err != nil {
		return err
	}
	t.writes = append(t.writes, write{c: cloneChange(c)})
	return nil
}

func cloneChange(c saga.Change) saga.Change {
	c.Instance = clone(c.Instance)
	c.Events = slices.Clone(c.Events)
	c.Messages = slices.Clone(c.Messages)
	return c
}

// check reports a conflict for w; the store's lock is held.
func (t *tx) check(w write) error {
	id := w.c.Instance.ID
	r := t.s.rows[id]
	if w.create {
		if r != nil {
			return fmt.Errorf("saga/memory: create %s: %w", id, saga.ErrConflict)
		}
		return nil
	}
	switch {
	case r == nil:
		return fmt.Errorf("saga/memory: save %s: %w", id, saga.ErrNotFound)
	case r.inst.Revision != w.c.Instance.Revision:
		return fmt.Errorf("saga/memory: save %s at revision %d, now %d: %w", id, w.c.Instance.Revision, r.inst.Revision, saga.ErrConflict)
	case r.claim != nil && r.claim != t:
		return fmt.Errorf("saga/memory: save %s: claimed by a timer: %w", id, saga.ErrConflict)
	}
	for _, ev := range w.c.Events {
		if ev.MessageID != "" && r.msgIDs[ev.MessageID] {
			return fmt.Errorf("saga/memory: save %s: message %s already recorded: %w", id, ev.MessageID, saga.ErrConflict)
		}
	}
	return nil
}

func (t *tx) Savepoint(ctx context.Context, fn func(ctx context.Context, tx saga.Tx) error) error {
	sp := &savepoint{}
	if err := fn(ctx, sp); err != nil {
		return err
	}
	t.afters = append(t.afters, sp.afters...)
	return nil
}

type savepoint struct{ afters []func() }

func (s *savepoint) AfterCommit(f func()) { s.afters = append(s.afters, f) }

func (t *tx) Commit(ctx context.Context) error {
	if t.ended {
		return fmt.Errorf("saga/memory: commit: transaction already ended")
	}
	t.ended = true
	s := t.s
	s.mu.Lock()
	for _, w := range t.writes {
		if err := t.check(w); err != nil {
			t.release()
			s.mu.Unlock()
			return err
		}
	}
	notify := false
	var msgs []broker.Message
	for _, w := range t.writes {
		c := w.c
		r := s.rows[c.Instance.ID]
		if w.create {
			r = &row{msgIDs: map[string]bool{}}
			s.rows[c.Instance.ID] = r
			c.Instance.Revision = 1
		} else {
			c.Instance.Revision = r.inst.Revision + 1
		}
		r.inst = c.Instance
		r.history = append(r.history, c.Events...)
		for _, ev := range c.Events {
			if ev.MessageID != "" {
				r.msgIDs[ev.MessageID] = true
			}
		}
		msgs = append(msgs, c.Messages...)
		notify = notify || c.Notify
	}
	t.release()
	var wake []func()
	if notify {
		for _, f := range s.listeners {
			wake = append(wake, f)
		}
	}
	s.out.add(msgs)
	s.mu.Unlock()
	for _, f := range wake {
		f()
	}
	for _, f := range t.afters {
		f()
	}
	return nil
}

// release drops the claims of t; the store's lock is held.
func (t *tx) release() {
	for _, r := range t.claims {
		if r.claim == t {
			r.claim = nil
		}
	}
	t.claims = nil
}

func (t *tx) Rollback(ctx context.Context) error {
	if t.ended {
		return nil
	}
	t.ended = true
	t.s.mu.Lock()
	t.release()
	t.s.mu.Unlock()
	return nil
}

func keySet(keys []saga.DefinitionKey) map[saga.DefinitionKey]bool {
	m := make(map[saga.DefinitionKey]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// ClaimDue implements saga.Store.
func (s *Store) ClaimDue(ctx context.Context, keys []saga.DefinitionKey, fn func(ctx context.Context, tx saga.StoreTx, inst saga.Instance) error) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	want := keySet(keys)
	now := time.Now()
	t := &tx{s: s}
	s.mu.Lock()
	var best *row
	for _, r := range s.rows {
		in := &r.inst
		if r.claim != nil || in.WakeAt.IsZero() || in.WakeAt.After(now) || !want[saga.DefinitionKey{Type: in.Type, Version: in.Version}] {
			continue
		}
		if best == nil || in.WakeAt.Before(best.inst.WakeAt) {
			best = r
		}
	}
	if best == nil {
		s.mu.Unlock()
		return false, nil
	}
	best.claim = t
	t.claims = append(t.claims, best)
	inst := clone(best.inst)
	s.mu.Unlock()
	if err := fn(ctx, t, inst); err != nil {
		_ = t.Rollback(ctx)
		return true, err
	}
	if err := t.Commit(ctx); err != nil {
		return true, err
	}
	return true, nil
}

// NextWake implements saga.Store.
func (s *Store) NextWake(ctx context.Context, keys []saga.DefinitionKey) (time.Time, bool, error) {
	want := keySet(keys)
	s.mu.Lock()
	defer s.mu.Unlock()
	var next time.Time
	for _, r := range s.rows {
		in := &r.inst
		if in.WakeAt.IsZero() || !want[saga.DefinitionKey{Type: in.Type, Version: in.Version}] {
			continue
		}
		if next.IsZero() || in.WakeAt.Before(next) {
			next = in.WakeAt
		}
	}
	return next, !next.IsZero(), nil
}

// Unfinished implements saga.Store.
func (s *Store) Unfinished(ctx context.Context) ([]saga.TypeVersion, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[saga.DefinitionKey]*saga.TypeVersion{}
	for id, r := range s.rows {
		if r.inst.Status.Finished() {
			continue
		}
		k := saga.DefinitionKey{Type: r.inst.Type, Version: r.inst.Version}
		tv := m[k]
		if tv == nil {
			tv = &saga.TypeVersion{Type: k.Type, Version: k.Version, Example: id}
			m[k] = tv
		}
		tv.Instances++
		tv.Example = min(tv.Example, id)
	}
	out := make([]saga.TypeVersion, 0, len(m))
	for _, tv := range m {
		out = append(out, *tv)
	}
	slices.SortFunc(out, func(a, b saga.TypeVersion) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Version, b.Version))
	})
	return out, nil
}

// Counts implements saga.Store.
func (s *Store) Counts(ctx context.Context) ([]saga.StatusCount, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	type k struct {
		t string
		s saga.Status
	}
	m := map[k]int64{}
	for _, r := range s.rows {
		if !r.inst.Status.Finished() {
			m[k{r.inst.Type, r.inst.Status}]++
		}
	}
	out := make([]saga.StatusCount, 0, len(m))
	for key, n := range m {
		out = append(out, saga.StatusCount{Type: key.t, Status: key.s, Count: n})
	}
	slices.SortFunc(out, func(a, b saga.StatusCount) int {
		return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Status, b.Status))
	})
	return out, nil
}

// Get implements saga.Store.
func (s *Store) Get(ctx context.Context, id string) (saga.Instance, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rows[id]
	if r == nil {
		return saga.Instance{}, fmt.Errorf("saga/memory: get %s: %w", id, saga.ErrNotFound)
	}
	return clone(r.inst), nil
}

// History implements saga.Store.
func (s *Store) History(ctx context.Context, id string, afterSeq int64, limit int) ([]saga.Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rows[id]
	if r == nil {
		return nil, fmt.Errorf("saga/memory: history %s: %w", id, saga.ErrNotFound)
	}
	var out []saga.Event
	for _, ev := range r.history {
		if ev.Seq > afterSeq {
			out = append(out, ev)
			if limit > 0 && len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// List implements saga.Store.
func (s *Store) List(ctx context.Context, q saga.Query) ([]saga.Instance, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	s.mu.Lock()
	var out []saga.Instance
	for id, r := range s.rows {
		if id <= q.AfterID || (q.Type != "" && r.inst.Type != q.Type) ||
			(len(q.Status) > 0 && !slices.Contains(q.Status, r.inst.Status)) {
			continue
		}
		out = append(out, clone(r.inst))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b saga.Instance) int { return cmp.Compare(a.ID, b.ID) })
	if len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// Request implements saga.Store.
func (s *Store) Request(ctx context.Context, id string, req saga.Request) (saga.Instance, error) {
	s.mu.Lock()
	r := s.rows[id]
	if r == nil {
		s.mu.Unlock()
		return saga.Instance{}, fmt.Errorf("saga/memory: request %s: %w", id, saga.ErrNotFound)
	}
	if err := sagastore.CheckRequest("saga/memory", r.inst, req); err != nil {
		s.mu.Unlock()
		return saga.Instance{}, err
	}
	in := r.inst
	ev := sagastore.ApplyRequest(&in, req, time.Now())
	in.Revision++
	r.inst = in
	r.history = append(r.history, ev)
	var wake []func()
	for _, f := range s.listeners {
		wake = append(wake, f)
	}
	s.mu.Unlock()
	for _, f := range wake {
		f()
	}
	return clone(in), nil
}

// Cleanup implements saga.Store.
func (s *Store) Cleanup(ctx context.Context, finishedBefore time.Time, limit int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, r := range s.rows {
		if n >= limit {
			break
		}
		if r.inst.Status.Finished() && r.inst.EndedAt.Before(finishedBefore) && r.claim == nil {
			delete(s.rows, id)
			n++
		}
	}
	return n, nil
}

// Listen implements saga.Notifier.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	s.mu.Lock()
	id := s.nextL
	s.nextL++
	s.listeners[id] = wake
	s.mu.Unlock()
	wake()
	<-ctx.Done()
	s.mu.Lock()
	delete(s.listeners, id)
	s.mu.Unlock()
	return nil
}
