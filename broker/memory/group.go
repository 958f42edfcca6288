package memory

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// entry is one message waiting in a group.
type entry struct {
	msg       broker.Message
	offset    int64
	group     string
	attempt   int       // deliveries so far, including the one in flight
	notBefore time.Time // earliest time of the next delivery
	kq        *keyQueue
}

// keyQueue holds the unacknowledged messages of one key, oldest first. Only
// its head is ever handed out, which is what keeps per-key order.
type keyQueue struct {
	key      string
	entries  []*entry
	inflight bool
	queued   bool // present in group.ready or group.delayed
}

// group is the state of one consumer group on one topic. Its fields are
// guarded by the broker's mutex.
type group struct {
	mu      *sync.Mutex
	name    string
	keys    map[string]*keyQueue
	ready   []*keyQueue // keys whose head can be delivered now, FIFO
	delayed []*keyQueue // keys whose head waits for its redelivery time
	pending int
	notify  chan struct{} // closed and replaced on every change
}

func newGroup(mu *sync.Mutex, name string) *group {
	return &group{mu: mu, name: name, keys: make(map[string]*keyQueue), notify: make(chan struct{})}
}

// enqueue adds m at the tail of its key's queue. Messages without a key get
// a queue of their own, so they are unordered and never block each other.
// Callers hold g.mu.
func (g *group) enqueue(m broker.Message, off int64) {
	key := m.Key
	if key == "" {
		key = "\x00" + strconv.FormatInt(off, 10)
	}
	kq := g.keys[key]
	if kq == nil {
		kq = &keyQueue{key: key}
		g.keys[key] = kq
	}
	kq.entries = append(kq.entries, &entry{msg: m, offset: off, group: g.name, kq: kq})
	g.pending++
	if !kq.inflight && !kq.queued {
		kq.queued = true
		g.ready = append(g.ready, kq)
	}
}

// broadcast wakes every waiting worker. Callers hold g.mu.
func (g *group) broadcast() {
	close(g.notify)
	g.notify = make(chan struct{})
}

// take blocks until a key's head is deliverable, marks the key in flight and
// returns the head. It returns false when ctx ends or done is closed.
func (g *group) take(ctx context.Context, done <-chan struct{}) (*entry, bool) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if ctx.Err() != nil {
			return nil, false
		}
		g.mu.Lock()
		now := time.Now()
		wake := g.promote(now)
		if len(g.ready) > 0 {
			kq := g.ready[0]
			g.ready[0] = nil
			g.ready = g.ready[1:]
			kq.queued = false
			kq.inflight = true
			e := kq.entries[0]
			e.attempt++
			g.mu.Unlock()
			return e, true
		}
		notify := g.notify
		g.mu.Unlock()

		var tc <-chan time.Time
		if !wake.IsZero() {
			if timer == nil {
				timer = time.NewTimer(wake.Sub(now))
			} else {
				timer.Reset(wake.Sub(now))
			}
			tc = timer.C
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-done:
			return nil, false
		case <-notify:
		case <-tc:
		}
	}
}

// promote moves delayed keys whose time has come to the ready list and
// returns the earliest remaining redelivery time (zero if none). Callers
// hold g.mu.
func (g *group) promote(now time.Time) time.Time {
	var next time.Time
	kept := g.delayed[:0]
	for _, kq := range g.delayed {
		if t := kq.entries[0].notBefore; !t.After(now) {
			g.ready = append(g.ready, kq)
		} else {
			kept = append(kept, kq)
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
	}
	clear(g.delayed[len(kept):])
	g.delayed = kept
	return next
}

// complete records a handler's result: nil removes the entry; an error keeps
// it at the head of its key and schedules the redelivery.
func (g *group) complete(e *entry, err error, backoff func(int) time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	kq := e.kq
	kq.inflight = false
	if err == nil {
		kq.entries[0] = nil
		kq.entries = kq.entries[1:]
		g.pending--
		if len(kq.entries) == 0 {
			delete(g.keys, kq.key)
			g.broadcast()
			return
		}
		kq.queued = true
		g.ready = append(g.ready, kq)
	} else {
		e.notBefore = time.Now().Add(backoff(e.attempt))
		kq.queued = true
		g.delayed = append(g.delayed, kq)
	}
	g.broadcast()
}
