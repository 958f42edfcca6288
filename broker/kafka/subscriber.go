package kafka

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/fault"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Subscriber consumes topics in Kafka consumer groups. It implements
// broker.Subscriber and is safe for concurrent use: each Subscribe call is
// one group member with its own connections. Create it with NewSubscriber
// and Close it when done.
//
// Guarantees:
//
//   - At least once. An offset is committed only after the handler of its
//     message and of every earlier message of the partition returned nil
//     (the highest contiguous completed offset), so a commit never passes a
//     message that was not processed.
//   - Order: with OrderPerKey (the default) messages of one key are handled
//     one at a time in offset order while other keys of the same partition
//     run in parallel; with OrderPerPartition one message of a partition runs
//     at a time. Partitions always run in parallel, up to
//     Subscription.Concurrency handlers per member.
//   - Failures do not spin: a failed message is retried in place after
//     SubscriberConfig.RetryBackoff, with Delivery.Attempt incremented and
//     Redelivered set, keeping its key (or partition) blocked so order holds.
//   - Rebalances use the cooperative-sticky balancer. When a partition is
//     revoked the member stops starting its messages, lets running handlers
//     finish (and runs the messages below the highest one started, so no
//     completed message lies past the commit point), commits, and only then
//     releases it. Shutdown does the same for every partition. Without
//     handler errors or crashes, no message is handed to a group twice.
//
// A message redelivered after a crash or a lost session (a member kicked
// out for missing RebalanceTimeout) arrives with Attempt 1: Kafka keeps no
// delivery count. Consumers deduplicate on Message.ID.
type Subscriber struct {
	cfg   SubscriberConfig
	admin *Admin

	mu      sync.Mutex
	closed  bool
	done    chan struct{}
	members sync.WaitGroup
	active  map[[2]string]int // {topic, group} -> running members

	reg    metric.Registration
	tracer trace.Tracer
}

var _ broker.Subscriber = (*Subscriber)(nil)

// NewSubscriber validates cfg and creates a subscriber. It registers the
// consumer-lag gauge (see Lag) with cfg.MeterProvider. It does not contact
// the cluster; Subscribe does.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	admin, err := NewAdmin(cfg.Config)
	if err != nil {
		return nil, err
	}
	s := &Subscriber{cfg: cfg, admin: admin, done: make(chan struct{}), active: make(map[[2]string]int),
		tracer: telemetry.Tracer(cfg.TracerProvider, scope)}
	if err := s.registerMetrics(); err != nil {
		admin.Close()
		return nil, err
	}
	return s, nil
}

// LagMetric is the name of the gauge the Subscriber reports: records of a
// partition not yet processed by a group (high watermark minus committed
// offset), with attributes messaging.destination.name (topic),
// messaging.consumer.group.name and messaging.destination.partition.id. It
// is observed for every topic and group with a running Subscribe call.
const LagMetric = "steadfast.kafka.consumer.lag"

func (s *Subscriber) registerMetrics() error {
	meter := telemetry.Meter(s.cfg.MeterProvider, scope)
	gauge, err := meter.Int64ObservableGauge(LagMetric,
		metric.WithDescription("Records of a partition not yet processed by a consumer group (high watermark minus committed offset)."),
		metric.WithUnit("{record}"))
	if err != nil {
		return fmt.Errorf("kafka: lag gauge: %w", err)
	}
	s.reg, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		return s.observeLag(ctx, o, gauge)
	}, gauge)
	if err != nil {
		return fmt.Errorf("kafka: lag gauge callback: %w", err)
	}
	return nil
}

func (s *Subscriber) observeLag(ctx context.Context, o metric.Observer, gauge metric.Int64ObservableGauge) error {
	s.mu.Lock()
	pairs := make([][2]string, 0, len(s.active))
	for k := range s.active {
		pairs = append(pairs, k)
	}
	s.mu.Unlock()
	var errs []error
	for _, tg := range pairs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lags, err := s.Lag(cctx, tg[0], tg[1])
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range lags {
			o.ObserveInt64(gauge, l.Lag, metric.WithAttributes(
				attribute.String("messaging.system", "kafka"),
				attribute.String("messaging.destination.name", l.Topic),
				attribute.String("messaging.consumer.group.name", tg[1]),
				attribute.Int("messaging.destination.partition.id", int(l.Partition)),
			))
		}
	}
	return errors.Join(errs...)
}

// Lag reports, for every partition of topic, how many records group has
// not yet processed: the high watermark minus the committed offset. The
// same figures feed the LagMetric gauge.
func (s *Subscriber) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	return s.admin.Lag(ctx, topic, group)
}

// Close stops every running Subscribe call (each drains its handlers,
// commits and leaves its group, then returns broker.ErrClosed), waits for
// them, and releases the subscriber's resources. Close is idempotent.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.members.Wait()
	if s.reg != nil {
		_ = s.reg.Unregister()
	}
	s.admin.Close()
	return nil
}

// Subscribe joins sub.Group on sub.Topic as a new member and runs h until ctx
// is cancelled (it returns nil) or the Subscriber is closed (it returns an
// error wrapping broker.ErrClosed). Bad arguments fail at once with the
// broker package's sentinels; a topic that does not exist fails with
// ErrUnknownTopic and a cluster that does not answer within StartTimeout
// with ErrUnreachable. After the start, broker outages are retried for as
// long as ctx lives.
//
// Handlers receive a context that is not cancelled with ctx: on shutdown or
// revocation they get DrainTimeout to finish before it is cancelled, and
// their results are recorded whenever they return. A handler that panics
// counts as failed and is retried.
func (s *Subscriber) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	sub = brokerimpl.WithDefaults(sub)
	if err := ctx.Err(); err != nil {
		return nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	s.members.Add(1)
	s.mu.Unlock()
	defer s.members.Done()

	if !s.cfg.AllowAutoTopicCreation {
		if _, err := s.admin.Partitions(ctx, sub.Topic); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
		}
	}

	key := [2]string{sub.Topic, sub.Group}
	s.mu.Lock()
	s.active[key]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.active[key]--; s.active[key] == 0 {
			delete(s.active, key)
		}
		s.mu.Unlock()
	}()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-runCtx.Done():
		}
	}()

	m, err := newMember(s, sub, h, ctx, new(recordPool))
	if err != nil {
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
	}
	m.run(runCtx)
	if ctx.Err() == nil {
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	return nil
}

// pointStop is the fault point (internal/fault) where a member stops; a
// fault there makes it stop as a crashed process would: nothing completed
// since the last periodic commit is committed.
const pointStop = "kafka/subscriber: stop"

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

// member is one Subscribe call: a kgo group consumer, a pool of workers and
// the per-partition bookkeeping.
type member struct {
	s   *Subscriber
	cfg *SubscriberConfig
	sub broker.Subscription
	h   broker.Handler
	log *slog.Logger
	cl  *kgo.Client

	handlerBase context.Context

	mu         sync.Mutex
	work       *sync.Cond // workers wait for ready items
	space      *sync.Cond // the poll loop waits for buffer space
	ready      []*item
	readyAt    int
	freeChains []*chain
	freeItems  []*item
	seed       maphash.Seed // of key hashes
	parts      map[int32]*partition
	live       int
	pollBelow  int // the poll loop waits while live is above it
	stopping   bool
	stopped    bool // the poll loop has exited

	commitMu sync.Mutex
	workers  sync.WaitGroup
}

// newMember returns the member of one Subscribe call. Its client decodes
// fetched records into slices of pool (a recordPool; tests pass one that
// counts its reuses).
func newMember(s *Subscriber, sub broker.Subscription, h broker.Handler, parent context.Context, pool kgo.PoolRecords) (*member, error) {
	m := &member{
		s: s, cfg: &s.cfg, sub: sub, h: h,
		log:         s.cfg.Logger.With("topic", sub.Topic, "group", sub.Group),
		handlerBase: context.WithoutCancel(parent),
		parts:       make(map[int32]*partition),
		seed:        maphash.MakeSeed(),
	}
	m.work = sync.NewCond(&m.mu)
	m.space = sync.NewCond(&m.mu)
	// Poll when a quarter of the buffer (at most maxPoll records) is free,
	// not for every record that finishes.
	m.pollBelow = s.cfg.MaxBufferedRecords - min(maxPoll, max(1, s.cfg.MaxBufferedRecords/4))
	iso := kgo.ReadUncommitted()
	if s.cfg.ReadCommitted {
		iso = kgo.ReadCommitted()
	}
	opts := append(s.cfg.baseOpts(), groupOpts(sub.Group, sub.Topic, iso,
		s.cfg.SessionTimeout, s.cfg.RebalanceTimeout, s.cfg.HeartbeatInterval)...)
	opts = append(opts,
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.OnPartitionsAssigned(m.onAssigned),
		kgo.OnPartitionsRevoked(m.onRevoked),
		kgo.OnPartitionsLost(m.onLost),
		kgo.WithPools(pool),
	)
	opts = append(opts, s.cfg.Options...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	m.cl = cl
	return m, nil
}

// run consumes until ctx ends, then drains, commits and leaves the group.
func (m *member) run(ctx context.Context) {
	for range m.sub.Concurrency {
		m.workers.Add(1)
		go m.worker()
	}
	commitDone := make(chan struct{})
	go func() {
		defer close(commitDone)
		m.commitLoop(ctx)
	}()
	wake := context.AfterFunc(ctx, func() {
		m.mu.Lock()
		m.space.Broadcast()
		m.mu.Unlock()
	})
	m.pollLoop(ctx)
	wake()
	<-commitDone

	// Shutdown: drain and commit every partition while still a member,
	// stop the workers, then leave the group.
	m.mu.Lock()
	m.stopped = true
	ids := make([]int32, 0, len(m.parts))
	for id := range m.parts {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	m.release(ids, fault.At(ctx, pointStop, nil) != nil)
	m.mu.Lock()
	m.stopping = true
	m.work.Broadcast()
	m.mu.Unlock()
	m.workers.Wait()
	m.cl.CloseAllowingRebalance()
}

// maxPoll bounds the records one poll takes. Records are handled soon after
// they are polled, while the fetch that decoded them is still in the CPU's
// caches, and a poll's queue bookkeeping stays small: taking all that franz-go
// has buffered at once (thousands of records per partition) costs about a
// tenth more CPU per message of 100 bytes (BenchmarkConsume).
const maxPoll = 2048

// pollLoop fetches records and hands them to the partitions' queues. It
// polls once live is down to pollBelow (a quarter of MaxBufferedRecords, at
// most maxPoll, is free again) and takes at most enough records to reach
// MaxBufferedRecords, and at most maxPoll.
func (m *member) pollLoop(ctx context.Context) {
	// The pause after consecutive fetches that failed and returned nothing.
	backoff := broker.Backoff{Initial: 100 * time.Millisecond, Max: 3200 * time.Millisecond, Jitter: -1}
	failures := 0
	for {
		m.mu.Lock()
		for m.live > m.pollBelow && ctx.Err() == nil {
			m.space.Wait()
		}
		room := min(m.cfg.MaxBufferedRecords-m.live, maxPoll)
		m.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		// franz-go fetches the next batches while these are handled.
		fs := m.cl.PollRecords(ctx, room)
		if fs.IsClientClosed() {
			m.cl.AllowRebalance()
			return
		}
		failed := false
		fs.EachError(func(t string, p int32, err error) {
			if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				failed = true
				m.log.Warn("kafka: fetch error", "partition", p, "error", err)
			}
		})
		n := 0
		m.mu.Lock()
		for recs := fs.RecordIter(); !recs.Done(); {
			if r := recs.Next(); m.add(m.newItem(), r) {
				n++
			} else {
				r.Recycle()
			}
		}
		if n > 0 {
			m.work.Broadcast()
		}
		m.mu.Unlock()
		m.cl.AllowRebalance()
		if failed && n == 0 {
			failures = min(failures+1, 64)
			select {
			case <-ctx.Done():
			case <-time.After(backoff.Delay(failures)):
			}
		} else {
			failures = 0
		}
	}
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
	ctx, span := telemetry.StartProcess(it.p.ctx, m.s.tracer, system, d)
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

func (m *member) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range assigned[m.sub.Topic] {
		if old := m.parts[id]; old != nil && !old.revoking {
			continue
		}
		ctx, cancel := context.WithCancel(m.handlerBase)
		m.parts[id] = &partition{
			id: id, ctx: ctx, cancel: cancel,
			chains:     make(map[uint64]*chain),
			sweepAt:    minSweep,
			next:       kgo.EpochOffset{Epoch: -1, Offset: -1},
			committed:  -1,
			maxStarted: -1,
		}
	}
	if len(assigned[m.sub.Topic]) > 0 {
		m.log.Debug("kafka: partitions assigned", "partitions", assigned[m.sub.Topic])
	}
}

func (m *member) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	if ids := revoked[m.sub.Topic]; len(ids) > 0 {
		m.release(ids, false)
	}
}

func (m *member) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	if ids := lost[m.sub.Topic]; len(ids) > 0 {
		m.log.Warn("kafka: partitions lost; uncommitted work will be redelivered to their next owner", "partitions", ids)
		m.release(ids, true)
	}
}

// release stops starting messages of the partitions, waits for their running
// handlers (cancelling their context after DrainTimeout), commits what
// completed unless the partitions were lost, and forgets them.
//
// To keep the commit point past every completed message, messages below the
// highest offset already started still run; messages at or above it that did
// not start, and messages waiting for a retry, are left for the next owner.
func (m *member) release(ids []int32, lost bool) {
	m.mu.Lock()
	var parts []*partition
	for _, id := range ids {
		p := m.parts[id]
		if p == nil {
			continue
		}
		parts = append(parts, p)
		if p.revoking {
			continue
		}
		p.revoking = true
		p.drained = make(chan struct{})
		p.limit = p.maxStarted + 1
		if lost {
			p.limit = -1
		}
		for _, c := range p.chains {
			var prev *item
			for x := c.head; x != nil; prev, x = x, x.next {
				if x.state == stBackoff || (x.state != stRunning && x.off >= p.limit) {
					m.dropFrom(prev, x)
					break
				}
			}
		}
		for _, it := range p.pending[p.head:] {
			if it.chain == nil && (it.state == stBackoff || (it.state == stReady && it.off >= p.limit)) {
				m.finish(it, stDropped)
			}
		}
		p.checkDrained()
	}
	m.mu.Unlock()
	if len(parts) == 0 {
		return
	}

	timer := time.NewTimer(m.cfg.DrainTimeout)
	defer timer.Stop()
	for _, p := range parts {
		select {
		case <-p.drained:
			continue
		case <-timer.C:
		}
		m.log.Warn("kafka: handlers still running after DrainTimeout; cancelling their context", "partition", p.id)
		for _, q := range parts {
			q.cancel()
		}
		<-p.drained
	}

	if !lost {
		m.commit(parts, true)
	}
	m.mu.Lock()
	for _, p := range parts {
		p.cancel()
		if m.parts[p.id] == p {
			delete(m.parts, p.id)
		}
	}
	m.mu.Unlock()
}

// commitLoop commits completed offsets every CommitInterval.
func (m *member) commitLoop(ctx context.Context) {
	t := time.NewTicker(m.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		parts := make([]*partition, 0, len(m.parts))
		for _, p := range m.parts {
			if !p.revoking {
				parts = append(parts, p)
			}
		}
		m.mu.Unlock()
		m.commit(parts, false)
	}
}

// commit commits the commit points of parts that moved. A sync commit waits
// for the result; an async one returns once the request is issued (franz-go
// keeps commits in issue order).
func (m *member) commit(parts []*partition, sync bool) {
	m.commitMu.Lock()
	defer m.commitMu.Unlock()
	offsets := make(map[int32]kgo.EpochOffset)
	m.mu.Lock()
	for _, p := range parts {
		if p.next.Offset > p.committed {
			offsets[p.id] = p.next
		}
	}
	m.mu.Unlock()
	if len(offsets) == 0 {
		return
	}
	req := map[string]map[int32]kgo.EpochOffset{m.sub.Topic: offsets}
	onDone := func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			m.log.Warn("kafka: offset commit failed", "error", err, "sync", sync)
			return
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, t := range resp.Topics {
			for _, pr := range t.Partitions {
				if pr.ErrorCode != 0 {
					m.log.Warn("kafka: offset commit failed", "partition", pr.Partition, "code", pr.ErrorCode, "sync", sync)
					continue
				}
				for _, p := range parts {
					if p.id == pr.Partition {
						p.committed = max(p.committed, offsets[p.id].Offset)
					}
				}
			}
		}
	}
	if sync {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.RebalanceTimeout)
		defer cancel()
		m.cl.CommitOffsetsSync(ctx, req, onDone)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.RebalanceTimeout)
	m.cl.CommitOffsets(ctx, req, func(cl *kgo.Client, rq *kmsg.OffsetCommitRequest, rs *kmsg.OffsetCommitResponse, err error) {
		defer cancel()
		onDone(cl, rq, rs, err)
	})
}
