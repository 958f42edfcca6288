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

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// pointStop is the fault point (internal/fault) where a member stops; a
// fault there makes it stop as a crashed process would: nothing completed
// since the last periodic commit is committed.
const pointStop = "kafka/subscriber: stop"

// member is one Subscribe call: a kgo group consumer that polls records
// into its partitions' queues (the scheduler, schedule.go), a pool of
// workers, and the group protocol around them (this file): partitions
// assigned, revoked and lost, released only after their running handlers
// finished and their offsets were committed, and the periodic commit.
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
