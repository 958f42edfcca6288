package memory

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

// Participants is an in-process saga.ParticipantStore: participant records
// and the outbox replies leave through. Create it with NewParticipants.
type Participants struct {
	out *outbox

	mu    sync.Mutex
	recs  map[saga.ParticipantKey]saga.ParticipantRecord
	locks map[saga.ParticipantKey]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

var _ saga.ParticipantStore = (*Participants)(nil)

// NewParticipants returns an empty participant store publishing replies
// to cfg.Publisher.
func NewParticipants(cfg Config) (*Participants, error) {
	cfg, err := cfg.check("participants")
	if err != nil {
		return nil, err
	}
	return &Participants{out: newOutbox(cfg.Publisher, cfg.Backoff, cfg.Logger),
		recs: map[saga.ParticipantKey]saga.ParticipantRecord{}, locks: map[saga.ParticipantKey]*keyLock{}}, nil
}

// Close stops publishing replies.
func (p *Participants) Close() error {
	p.out.close()
	return nil
}

// Flush waits until every reply committed so far was published.
func (p *Participants) Flush(ctx context.Context) error { return p.out.flush(ctx) }

// Record returns the record of key (State saga.ParticipantNone when none).
func (p *Participants) Record(key saga.ParticipantKey) saga.ParticipantRecord {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.recs[key]
	r.Payload = slices.Clone(r.Payload)
	return r
}

func (p *Participants) lock(key saga.ParticipantKey) *keyLock {
	p.mu.Lock()
	l := p.locks[key]
	if l == nil {
		l = &keyLock{}
		p.locks[key] = l
	}
	l.refs++
	p.mu.Unlock()
	l.mu.Lock()
	return l
}

func (p *Participants) unlock(key saga.ParticipantKey, l *keyLock) {
	l.mu.Unlock()
	p.mu.Lock()
	if l.refs--; l.refs == 0 {
		delete(p.locks, key)
	}
	p.mu.Unlock()
}

// Handle implements saga.ParticipantStore.
func (p *Participants) Handle(ctx context.Context, key saga.ParticipantKey, fn func(ctx context.Context, tx saga.Tx, rec saga.ParticipantRecord) (*saga.ParticipantRecord, []broker.Message, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l := p.lock(key)
	defer p.unlock(key, l)
	tx := &ptx{}
	rec, msgs, err := fn(ctx, tx, p.Record(key))
	if err != nil {
		return err
	}
	p.mu.Lock()
	if rec != nil {
		r := *rec
		r.Payload = slices.Clone(r.Payload)
		r.UpdatedAt = time.Now()
		p.recs[key] = r
	}
	p.out.add(msgs)
	p.mu.Unlock()
	for _, f := range tx.afters {
		f()
	}
	return nil
}

type ptx struct{ afters []func() }

func (t *ptx) AfterCommit(f func()) { t.afters = append(t.afters, f) }
