package memory

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
)

// Store keeps read models, checkpoints and leases in memory. The zero value
// is not usable; call New.
type Store struct {
	mu       sync.RWMutex
	versions map[cqrs.ID]*version
	active   map[string]int
	effects  map[string]eventsource.Position
	skipped  map[cqrs.ID][]cqrs.SkippedEvent
	// applied holds the event IDs each version fed by a broker applied,
	// with their expiry; onceMu serializes ApplyOnce.
	applied map[cqrs.ID]map[string]time.Time
	onceMu  sync.Mutex
	pruneAt time.Time
}

type version struct {
	state  cqrs.State
	tables map[string]map[string]any
	owner  string
	leased bool
	lease  int64
}

// New returns an empty store.
func New() *Store {
	return &Store{versions: map[cqrs.ID]*version{}, active: map[string]int{}, effects: map[string]eventsource.Position{},
		skipped: map[cqrs.ID][]cqrs.SkippedEvent{}, applied: map[cqrs.ID]map[string]time.Time{}}
}

var _ cqrs.Store[*Tx] = (*Store)(nil)

// Tx stages a batch's writes to the version's tables.
type Tx struct {
	ops []op
}

type op struct {
	table, key string
	value      any
	delta      float64
	del, add   bool
}

// Set stages value for key in table.
func (tx *Tx) Set(table, key string, value any) {
	tx.ops = append(tx.ops, op{table: table, key: key, value: value})
}

// Delete stages the removal of key from table.
func (tx *Tx) Delete(table, key string) {
	tx.ops = append(tx.ops, op{table: table, key: key, del: true})
}

// Add stages adding delta to the float64 at key in table (0 when absent):
// a counter or a leaderboard score.
func (tx *Tx) Add(table, key string, delta float64) {
	tx.ops = append(tx.ops, op{table: table, key: key, delta: delta, add: true})
}

// apply runs staged writes.
func (v *version) apply(ops []op) {
	for _, o := range ops {
		t := v.tables[o.table]
		if t == nil {
			t = map[string]any{}
			v.tables[o.table] = t
		}
		switch {
		case o.del:
			delete(t, o.key)
		case o.add:
			f, _ := t[o.key].(float64)
			t[o.key] = f + o.delta
		default:
			t[o.key] = o.value
		}
	}
}

func (s *Store) ver(id cqrs.ID) *version {
	v := s.versions[id]
	if v == nil {
		v = &version{state: cqrs.State{ID: id, Status: cqrs.StatusRunning}, tables: map[string]map[string]any{}}
		s.versions[id] = v
	}
	return v
}

// Acquire implements cqrs.Store: one lease per version, held until
// Release.
func (s *Store) Acquire(ctx context.Context, id cqrs.ID, owner string) (cqrs.Lease[*Tx], error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.ver(id)
	if v.leased {
		return nil, fmt.Errorf("memory: %w: %s held by %s", cqrs.ErrLocked, id, v.owner)
	}
	v.leased, v.owner = true, owner
	v.lease++
	v.state.Owner = owner
	return &lease{s: s, id: id, n: v.lease}, nil
}

type lease struct {
	s  *Store
	id cqrs.ID
	n  int64
}

func (l *lease) check(v *version) error {
	if !v.leased || v.lease != l.n {
		return fmt.Errorf("memory: %w: %s", cqrs.ErrLeaseLost, l.id)
	}
	return nil
}

func (l *lease) State(ctx context.Context) (cqrs.State, error) {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	v := l.s.ver(l.id)
	if err := l.check(v); err != nil {
		return cqrs.State{}, err
	}
	st := v.state
	st.Active = l.s.active[l.id.Name] == l.id.Version
	return st, nil
}

func (l *lease) Apply(ctx context.Context, c cqrs.Commit, fn func(context.Context, *Tx, eventsource.Position) error) error {
	l.s.mu.Lock()
	live := l.s.effects[l.id.Name]
	v := l.s.ver(l.id)
	if err := l.check(v); err != nil {
		l.s.mu.Unlock()
		return err
	}
	if v.state.Checkpoint != c.From {
		l.s.mu.Unlock()
		return fmt.Errorf("memory: %w: %s: stored %s, batch from %s", cqrs.ErrCheckpointConflict, l.id, v.state.Checkpoint, c.From)
	}
	l.s.mu.Unlock()
	tx := &Tx{}
	if fn != nil {
		if err := fn(ctx, tx, live); err != nil {
			return err
		}
	}
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if err := l.check(v); err != nil {
		return err
	}
	if v.state.Checkpoint != c.From {
		return fmt.Errorf("memory: %w: %s: stored %s, batch from %s", cqrs.ErrCheckpointConflict, l.id, v.state.Checkpoint, c.From)
	}
	v.apply(tx.ops)
	v.state.Checkpoint = c.To
	v.state.Status, v.state.Error, v.state.Attempts = cqrs.StatusRunning, "", 0
	v.state.Events += int64(c.Events)
	v.state.Skipped += int64(len(c.Skipped))
	v.state.Updated = time.Now()
	l.s.skipped[l.id] = append(l.s.skipped[l.id], c.Skipped...)
	if live.Before(c.To) {
		l.s.effects[l.id.Name] = c.To
	}
	return nil
}

func (l *lease) Fail(ctx context.Context, at eventsource.Position, status cqrs.Status, attempts int, msg string) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	v := l.s.ver(l.id)
	if err := l.check(v); err != nil {
		return err
	}
	if v.state.Checkpoint != at {
		return fmt.Errorf("memory: %w: %s: stored %s, failure at %s", cqrs.ErrCheckpointConflict, l.id, v.state.Checkpoint, at)
	}
	v.state.Status, v.state.Attempts, v.state.Error, v.state.Updated = status, attempts, msg, time.Now()
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	v := l.s.ver(l.id)
	if v.lease == l.n {
		v.leased, v.owner, v.state.Owner = false, "", ""
	}
	return nil
}

// State implements cqrs.StateReader.
func (s *Store) State(ctx context.Context, id cqrs.ID) (cqrs.State, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v := s.versions[id]
	if v == nil {
		return cqrs.State{}, fmt.Errorf("memory: %w: %s", cqrs.ErrNotFound, id)
	}
	st := v.state
	st.Active = s.active[id.Name] == id.Version
	return st, nil
}

// ActiveVersion implements cqrs.StateReader.
func (s *Store) ActiveVersion(ctx context.Context, name string) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.active[name], nil
}

// Activate implements cqrs.Store; views are ignored.
func (s *Store) Activate(ctx context.Context, id cqrs.ID, views []string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.versions[id]
	if v == nil {
		return fmt.Errorf("memory: %w: %s", cqrs.ErrNotFound, id)
	}
	if cur := s.active[id.Name]; cur != 0 && cur != id.Version {
		if old := s.versions[cqrs.ID{Name: id.Name, Version: cur}]; old != nil && v.state.Checkpoint.Before(old.state.Checkpoint) {
			return fmt.Errorf("memory: %w: %s at %s, serving version at %s", cqrs.ErrNotCaughtUp, id, v.state.Checkpoint, old.state.Checkpoint)
		}
	}
	s.active[id.Name] = id.Version
	return nil
}

// Reset implements cqrs.Store.
func (s *Store) Reset(ctx context.Context, id cqrs.ID) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.versions[id]
	if v == nil {
		return fmt.Errorf("memory: %w: %s", cqrs.ErrNotFound, id)
	}
	v.state.Status, v.state.Error, v.state.Attempts = cqrs.StatusRunning, "", 0
	return nil
}

// Skipped returns the events version id skipped, in order.
func (s *Store) Skipped(ctx context.Context, id cqrs.ID) ([]cqrs.SkippedEvent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.skipped[id]), nil
}

// Get returns the value at key in table of the serving version of name.
func (s *Store) Get(name, table, key string) (any, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v := s.versions[cqrs.ID{Name: name, Version: s.active[name]}]
	if v == nil {
		return nil, false
	}
	x, ok := v.tables[table][key]
	return x, ok
}

// Table returns a copy of table of version id (all versions, serving or
// not).
func (s *Store) Table(id cqrs.ID, table string) map[string]any {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]any{}
	if v := s.versions[id]; v != nil {
		for k, x := range v.tables[table] {
			out[k] = x
		}
	}
	return out
}

// Entry is a key and its score.
type Entry struct {
	Key   string
	Score float64
}

// Top returns the n highest scores (Tx.Add) of table in the serving
// version of name, highest first, ties by key.
func (s *Store) Top(name, table string, n int) []Entry {
	s.mu.RLock()
	v := s.versions[cqrs.ID{Name: name, Version: s.active[name]}]
	var out []Entry
	if v != nil {
		for k, x := range v.tables[table] {
			if f, ok := x.(float64); ok {
				out = append(out, Entry{k, f})
			}
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b Entry) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return cmp.Compare(a.Key, b.Key)
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

var _ cqrs.OnceStore[*Tx] = (*Store)(nil)

// ApplyOnce implements cqrs.OnceStore. Calls are serialized; an ID is
// fresh when not recorded or recorded longer than its Keep ago.
func (s *Store) ApplyOnce(ctx context.Context, id cqrs.ID, o cqrs.Once, fn func(context.Context, *Tx, []bool) error) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	s.onceMu.Lock()
	defer s.onceMu.Unlock()
	now := time.Now()
	s.mu.RLock()
	fresh := make([]bool, len(o.IDs))
	isNew := map[string]bool{}
	for i, eid := range o.IDs {
		exp, ok := s.applied[id][eid]
		fresh[i] = !ok || !now.Before(exp)
		isNew[eid] = fresh[i]
	}
	s.mu.RUnlock()
	tx := &Tx{}
	if fn != nil {
		if err := fn(ctx, tx, fresh); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.ver(id)
	v.apply(tx.ops)
	ids := s.applied[id]
	if ids == nil {
		ids = map[string]time.Time{}
		s.applied[id] = ids
	}
	for eid, ok := range isNew {
		if ok {
			ids[eid] = now.Add(o.Keep)
			v.state.Events++
		}
	}
	if now.After(s.pruneAt) {
		s.pruneAt = now.Add(time.Minute)
		for eid, exp := range ids {
			if !now.Before(exp) {
				delete(ids, eid)
			}
		}
	}
	for _, k := range o.Skipped {
		if isNew[k.EventID] {
			s.skipped[id] = append(s.skipped[id], k)
			v.state.Events--
			v.state.Skipped++
		}
	}
	v.state.Status, v.state.Error, v.state.Attempts = cqrs.StatusRunning, "", 0
	v.state.Updated = now
	return nil
}

// Fail implements cqrs.OnceStore.
func (s *Store) Fail(ctx context.Context, id cqrs.ID, status cqrs.Status, attempts int, msg string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.ver(id)
	v.state.Status, v.state.Attempts, v.state.Error, v.state.Updated = status, attempts, msg, time.Now()
	return nil
}
