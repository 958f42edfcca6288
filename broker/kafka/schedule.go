package kafka

import (
	"context"
	"fmt"
	"hash/maphash"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// The per-partition scheduler of a member: every fetched record is an item
// queued on its partition and on its key's chain; only a chain's head is
// ready to run, workers take ready items and run the handler, and
// completing an item moves its chain on, schedules its retry, or advances
// its partition's commit point.

// Item states.
const (
	stQueued  uint8 = iota // waiting behind an earlier message of its key
	stReady                // in the ready queue
	stRunning              // handler running
	stBackoff              // failed, waiting for its retry
	stDone                 // handler returned nil
	stDropped              // abandoned: its partition was released first
)

// item is one fetched record and its progress.
type item struct {
	rec     *kgo.Record // decoded to a Delivery by the worker that runs it
	p       *partition
	part    int32
	off     int64
	epoch   int32
	attempt int
	state   uint8
	chain   *chain
	next    *item // successor in its chain
	timer   *time.Timer
	gen     uint32 // counts the item's reuses (see member.recycle)
}

// chain is the queue of one key's unfinished items in a partition; only its
// head may run. A chain whose items all finished stays in its partition's
// map, idle (head nil), so a key that comes back costs one map lookup;
// idle chains are swept out when the map grows (see member.add).
//
// Chains are found by a seeded 64-bit hash of the key, not the key itself:
// a map of integers is smaller and faster than one of strings, and no copy
// of a key is kept. Two keys whose hashes collide (about one pair in 2^64)
// share a chain: each keeps its order, they merely do not run in parallel.
type chain struct {
	head *item
	tail *item
}

// partition is the member's state for one assigned partition.
type partition struct {
	id      int32
	ctx     context.Context // handler context
	cancel  context.CancelFunc
	pending []*item           // unfinished or not yet committable items, offset order
	head    int               // pending[head] is the oldest item above the commit point
	chains  map[uint64]*chain // live and idle chains by key hash
	sweepAt int               // sweep idle chains when chains grows to this

	next       kgo.EpochOffset // commit point: offset after the contiguous done prefix
	committed  int64           // last committed offset, -1 if none by this member
	maxStarted int64

	revoking  bool
	limit     int64 // when revoking: items at or above it are dropped
	live      int   // items not done or dropped
	drained   chan struct{}
	isDrained bool
}

// add queues r as it, a zero item. Callers hold m.mu.
func (m *member) add(it *item, r *kgo.Record) bool {
	p := m.parts[r.Partition]
	if p == nil || p.revoking {
		return false
	}
	// Field by field: copying a whole item would run the write barrier over
	// every field of it.
	it.rec, it.p = r, p
	it.part, it.off, it.epoch, it.attempt = r.Partition, r.Offset, r.LeaderEpoch, 1
	p.pending = append(p.pending, it)
	p.live++
	m.live++
	var h uint64 // OrderPerPartition: one chain
	switch {
	case m.cfg.Ordering == OrderPerPartition:
	case len(it.rec.Key) > 0:
		h = m.keyHash(it.rec.Key)
	default:
		m.pushReady(it) // no key, no ordering constraint
		return true
	}
	c := p.chains[h]
	if c == nil {
		if len(p.chains) >= p.sweepAt {
			m.sweepChains(p)
		}
		if n := len(m.freeChains); n > 0 {
			c = m.freeChains[n-1]
			m.freeChains = m.freeChains[:n-1]
		} else {
			c = new(chain)
		}
		p.chains[h] = c
	}
	it.chain = c
	if c.head == nil {
		c.head, c.tail = it, it
		m.pushReady(it)
		return true
	}
	it.state = stQueued
	c.tail.next = it
	c.tail = it
	return true
}

// keyHash is the hash a key's chain is found by.
func (m *member) keyHash(key []byte) uint64 { return maphash.Bytes(m.seed, key) }

// minSweep is the size below which a partition's chain map is never swept;
// maxFreeChains bounds the swept chains a member keeps for reuse.
const (
	minSweep      = 4096
	maxFreeChains = 4096
)

// sweepChains deletes p's idle chains, keeping some for reuse, and sets
// the size at which the next sweep runs to twice what is left, so the cost
// of a sweep is spread over as many new keys as it removed. Callers hold
// m.mu.
func (m *member) sweepChains(p *partition) {
	for k, c := range p.chains {
		if c.head != nil {
			continue
		}
		delete(p.chains, k)
		if len(m.freeChains) < maxFreeChains {
			m.freeChains = append(m.freeChains, c)
		}
	}
	p.sweepAt = max(minSweep, 2*len(p.chains))
}

func (m *member) pushReady(it *item) {
	it.state = stReady
	if m.readyAt > 0 && m.readyAt == len(m.ready) {
		m.ready = m.ready[:0]
		m.readyAt = 0
	}
	m.ready = append(m.ready, it)
}

func (m *member) popReady() *item {
	for m.readyAt < len(m.ready) {
		it := m.ready[m.readyAt]
		m.ready[m.readyAt] = nil
		m.readyAt++
		if it.state == stReady {
			return it
		}
	}
	m.ready = m.ready[:0]
	m.readyAt = 0
	return nil
}

// maxTake bounds the items a worker takes from the ready queue at once.
const maxTake = 64

// worker runs handlers. It takes a share of the ready queue at a time (the
// items are heads of different keys, so running them one after the other
// keeps every order) to pay for the lock once per share rather than once
// per message.
func (m *member) worker() {
	defer m.workers.Done()
	var (
		batch []*item
		errs  []error
		arena textArena // decodes this worker's deliveries
	)
	m.mu.Lock()
	for {
		n := min(maxTake, max(1, (len(m.ready)-m.readyAt)/m.sub.Concurrency))
		batch = batch[:0]
		for len(batch) < n {
			it := m.popReady()
			if it == nil {
				break
			}
			it.state = stRunning
			it.p.maxStarted = max(it.p.maxStarted, it.off)
			batch = append(batch, it)
		}
		if len(batch) == 0 {
			if m.stopping {
				m.mu.Unlock()
				return
			}
			m.work.Wait()
			continue
		}
		m.mu.Unlock()
		errs = errs[:0]
		for _, it := range batch {
			errs = append(errs, m.handle(it, &arena))
		}
		m.mu.Lock()
		for i, it := range batch {
			m.complete(it, errs[i])
			batch[i] = nil
		}
	}
}

// handle runs the handler for it in its process span, turning a panic
// into an error.
func (m *member) handle(it *item, a *textArena) (err error) {
	d := broker.Delivery{
		Message:     fromRecord(it.rec, a),
		Attempt:     it.attempt,
		Redelivered: it.attempt > 1,
		Group:       m.sub.Group,
		Partition:   it.part,
		Offset:      it.off,
	}
	ctx, span := m.s.spans.Process(it.p.ctx, d)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("kafka: handler panicked: %v", r)
		}
		telemetry.End(span, err)
	}()
	return m.h(ctx, d)
}

// complete records the result of a handler. Callers hold m.mu.
func (m *member) complete(it *item, err error) {
	p := it.p
	if err == nil {
		m.advance(it) // first: finish may recycle it
		m.finish(it, stDone)
		return
	}
	if p.revoking || m.stopped {
		m.log.Info("kafka: handler failed while its partition is released; left for the next owner",
			"partition", p.id, "offset", it.off, "attempt", it.attempt, "error", err)
		m.dropFrom(nil, it)
		return
	}
	m.log.Debug("kafka: handler failed; retrying", "partition", p.id, "offset", it.off, "attempt", it.attempt, "error", err)
	it.state = stBackoff
	wait := m.cfg.RetryBackoff.Delay(it.attempt)
	it.attempt++
	gen := it.gen
	it.timer = time.AfterFunc(wait, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if it.gen == gen && it.state == stBackoff {
			m.pushReady(it)
			m.work.Signal()
		}
	})
}

// finish moves it to a terminal state and updates counters and the commit
// point. Callers hold m.mu.
func (m *member) finish(it *item, st uint8) {
	p := it.p
	it.state = st
	if it.timer != nil {
		it.timer.Stop()
		it.timer = nil
	}
	it.rec.Recycle() // to the member's pool: see recordPool
	it.rec = nil
	p.live--
	m.live--
	if st == stDone && p.pending[p.head] == it {
		for p.head < len(p.pending) && p.pending[p.head].state == stDone {
			done := p.pending[p.head]
			p.next = kgo.EpochOffset{Epoch: done.epoch, Offset: done.off + 1}
			p.pending[p.head] = nil
			p.head++
			m.recycle(done)
		}
		if p.head == len(p.pending) {
			p.pending = p.pending[:0]
			p.head = 0
		} else if p.head > 1024 && p.head > len(p.pending)/2 {
			n := copy(p.pending, p.pending[p.head:])
			clear(p.pending[n:])
			p.pending = p.pending[:n]
			p.head = 0
		}
	}
	if m.live == m.pollBelow {
		m.space.Signal()
	}
	p.checkDrained()
}

// maxFreeItems bounds the items a member keeps for reuse.
const maxFreeItems = 16384

// newItem returns a zero item, reused if one is free. Callers hold m.mu.
func (m *member) newItem() *item {
	if n := len(m.freeItems); n > 0 {
		it := m.freeItems[n-1]
		m.freeItems = m.freeItems[:n-1]
		return it
	}
	return new(item)
}

// recycle keeps it, a done item the commit point passed, for reuse. Nothing
// refers to such an item any more: its chain moved on (complete advances
// the chain before finishing the item), it left the ready queue when it ran,
// and its partition's pending list just dropped it. A retry timer's
// callback checks gen as well, so even a stale callback cannot touch the
// item's next use. Reuse spares an allocation per message, which leaves
// the Subscriber allocating per message about what franz-go itself does.
// Dropped items are never reused. Callers hold m.mu.
func (m *member) recycle(it *item) {
	if len(m.freeItems) >= maxFreeItems {
		return
	}
	*it = item{gen: it.gen + 1}
	m.freeItems = append(m.freeItems, it)
}

// checkDrained signals a released partition whose last item finished.
func (p *partition) checkDrained() {
	if p.revoking && p.live == 0 && !p.isDrained {
		p.isDrained = true
		close(p.drained)
	}
}

// advance makes the next item of it's chain runnable. Callers hold m.mu.
func (m *member) advance(it *item) {
	c := it.chain
	if c == nil {
		return
	}
	nx := it.next
	it.next = nil
	if nx == nil {
		c.head, c.tail = nil, nil
		return
	}
	c.head = nx
	if it.p.revoking && nx.off >= it.p.limit {
		m.dropFrom(nil, nx)
		return
	}
	m.pushReady(nx)
	m.work.Signal()
}

// dropFrom abandons x and every later item of its chain; prev is x's
// predecessor in the chain, nil when x is the head or has no chain. Callers
// hold m.mu.
func (m *member) dropFrom(prev, x *item) {
	if c := x.chain; c != nil {
		if prev == nil {
			c.head, c.tail = nil, nil
		} else {
			prev.next = nil
			c.tail = prev
		}
	}
	for x != nil {
		nx := x.next
		x.next = nil
		if x.state != stDone && x.state != stDropped {
			m.finish(x, stDropped)
		}
		x = nx
	}
}
