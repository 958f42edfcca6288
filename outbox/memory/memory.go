package memory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/propagation"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
	"github.com/steadfast-go/steadfast/outbox"
)

// Sentinel errors.
var (
	// ErrInvalidConfig is returned by New for a negative setting.
	ErrInvalidConfig = errors.New("outbox/memory: invalid config")
	// ErrTxDone is returned by Enqueue, Commit and Rollback of a Tx that
	// already committed or rolled back (like pgx.ErrTxClosed: a deferred
	// Rollback after Commit returns it and can be ignored).
	ErrTxDone = errors.New("outbox/memory: transaction already committed or rolled back")
	// ErrClaimDone is returned by Complete or Release of a claim that
	// already ended.
	ErrClaimDone = errors.New("outbox/memory: claim already completed or released")
)

// Config configures a Store. The zero value is ready to use.
type Config struct {
	// MaxMessageBytes is the size limit Enqueue enforces (broker.Message
	// Size). Default broker.DefaultMaxMessageBytes, every steadfast
	// publisher's default. Negative is invalid.
	MaxMessageBytes int
	// Propagator injects the trace context of Enqueue's ctx into message
	// headers that carry none yet. Default: the W3C trace context
	// (traceparent, tracestate), as every steadfast publisher writes it.
	Propagator propagation.TextMapPropagator
}

// Store is an outbox kept in process memory. It implements outbox.Store and
// outbox.Notifier, writes rows with Enqueue (committed at once) or through
// a Tx, and is safe for concurrent use. Create it with New.
type Store struct {
	o    *state
	sess *session
}

var (
	_ outbox.Store       = (*Store)(nil)
	_ outbox.Notifier    = (*Store)(nil)
	_ broker.SizeLimiter = (*Store)(nil)
)

// state is the outbox shared by every handle on it.
type state struct {
	cfg Config

	mu        sync.Mutex
	nextID    int64
	live      []*row // committed rows not yet published (pending or dead), in ID order
	published []*row // published rows kept for Cleanup, in publication order
	held      map[string]*claim
	listeners map[int]func()
	nextL     int
}

// session is one handle's set of open claims: what a database session
// would hold and lose when it dies.
type session struct {
	claims map[*claim]struct{} // guarded by state.mu
}

type row struct {
	rec         outbox.Record
	retryAt     time.Time
	publishedAt time.Time
	claim       *claim
}

// New returns an empty outbox.
func New(cfg Config) (*Store, error) {
	if cfg.MaxMessageBytes < 0 {
		return nil, fmt.Errorf("%w: negative MaxMessageBytes %d", ErrInvalidConfig, cfg.MaxMessageBytes)
	}
	cfg.MaxMessageBytes = cmp.Or(cfg.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	o := &state{cfg: cfg, held: map[string]*claim{}, listeners: map[int]func(){}}
	return &Store{o: o, sess: newSession()}, nil
}

func newSession() *session { return &session{claims: map[*claim]struct{}{}} }

// MaxMessageBytes returns the largest Message.Size Enqueue accepts
// (Config.MaxMessageBytes). It implements broker.SizeLimiter, which the
// relay reads to check that its publisher accepts as much.
func (s *Store) MaxMessageBytes() int { return s.o.cfg.MaxMessageBytes }

// Enqueue writes msgs as outbox rows, in argument order, and commits them
// at once (it is Begin, Tx.Enqueue and Commit in one call).
//
// Messages are validated and completed as a publisher does (an empty ID
// gets a UUIDv7, a zero Time the current time); a batch with an invalid
// message (empty topic, over MaxMessageBytes) writes nothing and returns an
// error wrapping broker.ErrEmptyTopic or broker.ErrMessageTooLarge. The
// trace context of ctx is added to messages that carry none. The messages
// are copied: changing them afterwards changes nothing stored. Listening
// relays are woken.
func (s *Store) Enqueue(ctx context.Context, msgs ...broker.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	rows, err := s.o.prepare(ctx, msgs)
	if err != nil {
		return err
	}
	s.o.commit(rows)
	return nil
}

// prepare validates and copies msgs and gives them row IDs.
func (o *state) prepare(ctx context.Context, msgs []broker.Message) ([]*row, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("outbox/memory: enqueue: %w", err)
	}
	msgs, err := brokerimpl.Normalize(msgs, o.cfg.MaxMessageBytes)
	if err != nil {
		return nil, fmt.Errorf("outbox/memory: enqueue: %w", err)
	}
	trace := telemetry.TraceHeaders(ctx, o.cfg.Propagator)
	now := time.Now()
	rows := make([]*row, len(msgs))
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, m := range msgs {
		m.Payload = slices.Clone(m.Payload)
		m.Headers = maps.Clone(telemetry.WithTraceHeaders(m.Headers, trace))
		o.nextID++
		rows[i] = &row{rec: outbox.Record{ID: o.nextID, Message: m, Status: outbox.StatusPending, EnqueuedAt: now}}
	}
	return rows, nil
}

// commit makes rows visible, each at its place in ID order, and wakes the
// listeners.
func (o *state) commit(rows []*row) {
	if len(rows) == 0 {
		return
	}
	o.mu.Lock()
	for _, r := range rows {
		if n := len(o.live); n == 0 || o.live[n-1].rec.ID < r.rec.ID {
			o.live = append(o.live, r)
			continue
		}
		i, _ := slices.BinarySearchFunc(o.live, r.rec.ID, func(x *row, id int64) int { return cmp.Compare(x.rec.ID, id) })
		o.live = slices.Insert(o.live, i, r)
	}
	wake := o.wakers()
	o.mu.Unlock()
	for _, f := range wake {
		f()
	}
}

// wakers returns the listeners' wake functions. o.mu must be held.
func (o *state) wakers() []func() {
	return slices.Collect(maps.Values(o.listeners))
}

// Tx is a transaction that writes outbox rows: they get their IDs (and so
// their place in their key's order) when Enqueue writes them, and become
// visible to claims when Commit returns, or never if it rolls back. A Tx
// is not safe for concurrent use.
//
// A memory Tx holds outbox rows only: it cannot make your own in-memory
// state commit or roll back with them. Make the state change and Commit
// one step of your code (as BeginFunc does) with nothing that can fail in
// between; Commit itself cannot fail on a live Tx.
type Tx struct {
	o    *state
	rows []*row
	done bool
}

// Begin starts a transaction.
func (s *Store) Begin(ctx context.Context) (*Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("outbox/memory: begin: %w", err)
	}
	return &Tx{o: s.o}, nil
}

// BeginFunc runs fn in a transaction: it commits when fn returns nil and
// rolls back (writing nothing) when fn returns an error, which BeginFunc
// returns. Put the change of your own state last in fn, after everything
// that can fail, so that it happens exactly when the rows commit.
func (s *Store) BeginFunc(ctx context.Context, fn func(tx *Tx) error) error {
	tx, err := s.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(ctx)
		return err
	}
	return tx.Commit(ctx)
}

// Enqueue writes msgs in the transaction, in argument order, with the
// validation, completion and trace propagation of Store.Enqueue. A refused
// batch writes nothing and leaves the transaction usable.
func (t *Tx) Enqueue(ctx context.Context, msgs ...broker.Message) error {
	if t.done {
		return ErrTxDone
	}
	if len(msgs) == 0 {
		return nil
	}
	rows, err := t.o.prepare(ctx, msgs)
	if err != nil {
		return err
	}
	t.rows = append(t.rows, rows...)
	return nil
}

// Commit makes the transaction's rows visible to claims and wakes listening
// relays. It fails only with ErrTxDone.
func (t *Tx) Commit(ctx context.Context) error {
	if t.done {
		return ErrTxDone
	}
	t.done = true
	t.o.commit(t.rows)
	t.rows = nil
	return nil
}

// Rollback discards the transaction's rows. It returns ErrTxDone after
// Commit or Rollback.
func (t *Tx) Rollback(ctx context.Context) error {
	if t.done {
		return ErrTxDone
	}
	t.done = true
	t.rows = nil
	return nil
}

// Claim implements outbox.Store: under the store's lock it walks the
// committed unpublished rows in ID order and takes, for each key not held
// by another claim, the run of pending rows from the key's head, stopping at
// a row waiting for its retry (and, with DeadBlocksKey, at a parked row).
// Memory claims have no deadline: they end with Complete, Release or a
// crash of the handle only.
func (s *Store) Claim(ctx context.Context, req outbox.ClaimRequest) (outbox.Claim, error) {
	if req.Limit <= 0 {
		return nil, fmt.Errorf("outbox/memory: claim: limit %d must be positive", req.Limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("outbox/memory: claim: %w", err)
	}
	o := s.o
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	c := &claim{o: o, sess: s.sess}
	stopped := map[string]bool{}
	for _, r := range o.live {
		if len(c.rows) == req.Limit {
			break
		}
		k := r.rec.Message.Key
		if k == "" {
			if r.rec.Status == outbox.StatusPending && r.claim == nil && !r.retryAt.After(now) {
				c.rows = append(c.rows, r)
			}
			continue
		}
		if stopped[k] {
			continue
		}
		if h := o.held[k]; h != nil && h != c {
			stopped[k] = true
			continue
		}
		if r.rec.Status == outbox.StatusDead {
			if req.DeadBlocksKey {
				stopped[k] = true
			}
			continue
		}
		if r.retryAt.After(now) {
			stopped[k] = true
			continue
		}
		c.rows = append(c.rows, r)
		o.held[k] = c
	}
	if len(c.rows) == 0 {
		return &claim{done: true}, nil
	}
	c.recs = make([]outbox.Record, len(c.rows))
	for i, r := range c.rows {
		r.claim = c
		c.recs[i] = cloneRecord(r.rec)
	}
	s.sess.claims[c] = struct{}{}
	return c, nil
}

// cloneRecord returns r with its own payload and headers.
func cloneRecord(r outbox.Record) outbox.Record {
	r.Message.Payload = slices.Clone(r.Message.Payload)
	r.Message.Headers = maps.Clone(r.Message.Headers)
	return r
}

type claim struct {
	o    *state
	sess *session
	rows []*row
	recs []outbox.Record
	done bool  // guarded by o.mu (or never set again for an empty claim)
	err  error // why a claim ended before Complete or Release, if it did
}

func (c *claim) Records() []outbox.Record { return c.recs }

// Complete implements outbox.Claim. IDs in o that are not rows of the claim
// are ignored.
func (c *claim) Complete(ctx context.Context, out outbox.Outcome) error {
	if c.o == nil {
		if len(out.Published) == 0 && len(out.Failed) == 0 {
			return nil
		}
		return ErrClaimDone
	}
	o := c.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if c.done {
		return c.ended()
	}
	mine := make(map[int64]*row, len(c.rows))
	for _, r := range c.rows {
		mine[r.rec.ID] = r
	}
	now := time.Now()
	gone := map[*row]bool{}
	for _, id := range out.Published {
		r := mine[id]
		if r == nil || gone[r] {
			continue
		}
		gone[r] = true
		r.rec.Status = outbox.StatusPublished
		if !out.Delete {
			r.publishedAt = now
			o.published = append(o.published, r)
		}
	}
	for _, f := range out.Failed {
		r := mine[f.ID]
		if r == nil || gone[r] {
			continue
		}
		r.rec.Attempts++
		r.rec.LastError = f.Reason
		if f.Park {
			r.rec.Status = outbox.StatusDead
			r.rec.ParkedAt = now
		} else {
			r.retryAt = now.Add(max(f.RetryAfter, 0))
		}
	}
	if len(gone) > 0 {
		o.live = slices.DeleteFunc(o.live, func(r *row) bool { return gone[r] })
	}
	c.end(nil)
	return nil
}

// Release implements outbox.Claim.
func (c *claim) Release(ctx context.Context) error {
	if c.o == nil {
		return nil
	}
	c.o.mu.Lock()
	defer c.o.mu.Unlock()
	if c.done {
		return c.ended()
	}
	c.end(nil)
	return nil
}

func (c *claim) ended() error {
	if c.err != nil {
		return c.err
	}
	return ErrClaimDone
}

// end releases the claim's rows and keys. c.o.mu must be held.
func (c *claim) end(err error) {
	c.done, c.err = true, err
	for _, r := range c.rows {
		if r.claim == c {
			r.claim = nil
		}
		if k := r.rec.Message.Key; k != "" && c.o.held[k] == c {
			delete(c.o.held, k)
		}
	}
	delete(c.sess.claims, c)
}

// crash ends every open claim of the handle, leaving their rows unchanged,
// as the death of a database session would.
func (s *Store) crash() {
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	for c := range s.sess.claims {
		c.end(errors.New("outbox/memory: claim ended by a crash of its store handle"))
	}
}

// Stats implements outbox.Store.
func (s *Store) Stats(ctx context.Context) (outbox.Stats, error) {
	if err := ctx.Err(); err != nil {
		return outbox.Stats{}, fmt.Errorf("outbox/memory: stats: %w", err)
	}
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	var st outbox.Stats
	for _, r := range s.o.live {
		if r.rec.Status == outbox.StatusDead {
			st.Dead++
			continue
		}
		st.Pending++
		if st.OldestPending.IsZero() || r.rec.EnqueuedAt.Before(st.OldestPending) {
			st.OldestPending = r.rec.EnqueuedAt
		}
	}
	return st, nil
}

// Cleanup implements outbox.Store.
func (s *Store) Cleanup(ctx context.Context, publishedBefore time.Time, limit int) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("outbox/memory: cleanup: %w", err)
	}
	if limit <= 0 {
		return 0, nil
	}
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	n := 0
	for n < len(s.o.published) && n < limit && s.o.published[n].publishedAt.Before(publishedBefore) {
		n++
	}
	clear(s.o.published[:n])
	s.o.published = s.o.published[n:]
	return n, nil
}

// Parked implements outbox.Store.
func (s *Store) Parked(ctx context.Context, q outbox.ParkedQuery) ([]outbox.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("outbox/memory: list parked: %w", err)
	}
	if q.Limit <= 0 {
		q.Limit = 100
	}
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	var out []outbox.Record
	for _, r := range s.o.live {
		if r.rec.Status == outbox.StatusDead && r.rec.ID > q.AfterID {
			out = append(out, cloneRecord(r.rec))
			if len(out) == q.Limit {
				break
			}
		}
	}
	return out, nil
}

// Redrive implements outbox.Store. It wakes listening relays.
func (s *Store) Redrive(ctx context.Context, ids ...int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("outbox/memory: redrive: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	want := make(map[int64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	s.o.mu.Lock()
	n := 0
	for _, r := range s.o.live {
		if r.rec.Status == outbox.StatusDead && want[r.rec.ID] {
			r.rec.Status, r.rec.Attempts, r.rec.ParkedAt, r.retryAt = outbox.StatusPending, 0, time.Time{}, time.Time{}
			n++
		}
	}
	var wake []func()
	if n > 0 {
		wake = s.o.wakers()
	}
	s.o.mu.Unlock()
	for _, f := range wake {
		f()
	}
	return n, nil
}

// Delete implements outbox.Store.
func (s *Store) Delete(ctx context.Context, ids ...int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("outbox/memory: delete parked: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	want := make(map[int64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	s.o.mu.Lock()
	defer s.o.mu.Unlock()
	before := len(s.o.live)
	s.o.live = slices.DeleteFunc(s.o.live, func(r *row) bool { return r.rec.Status == outbox.StatusDead && want[r.rec.ID] })
	return before - len(s.o.live), nil
}

// Listen implements outbox.Notifier: wake is called once at the start (for
// rows committed before), then after every commit and redrive, until ctx
// is done. It returns nil then. wake is called outside the store's lock.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	s.o.mu.Lock()
	id := s.o.nextL
	s.o.nextL++
	s.o.listeners[id] = wake
	s.o.mu.Unlock()
	defer func() {
		s.o.mu.Lock()
		delete(s.o.listeners, id)
		s.o.mu.Unlock()
	}()
	wake()
	<-ctx.Done()
	return nil
}
