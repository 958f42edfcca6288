package kafka

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// orderTracker checks per-key order across all members of a group: a key's
// messages never run concurrently and never skip ahead; a message at or
// below the highest sequence already handled is a duplicate (redelivery).
type orderTracker struct {
	t        *testing.T
	mu       sync.Mutex
	maxSeq   map[string]int
	active   map[string]bool
	seen     map[string]int
	byMember [2]map[int32]bool // partitions each member handled
	total    int
	dups     int
	want     int
	full     chan struct{}
}

func newOrderTracker(t *testing.T, want int) *orderTracker {
	return &orderTracker{t: t, maxSeq: map[string]int{}, active: map[string]bool{}, seen: map[string]int{},
		byMember: [2]map[int32]bool{{}, {}}, want: want, full: make(chan struct{})}
}

func (o *orderTracker) handler(member int, work *atomic.Int64) broker.Handler {
	return func(_ context.Context, d broker.Delivery) error {
		seq, _ := strconv.Atoi(d.Headers["seq"])
		o.mu.Lock()
		if o.active[d.Key] {
			o.t.Errorf("key %s: two handlers at once", d.Key)
		}
		o.active[d.Key] = true
		last, ok := o.maxSeq[d.Key]
		if !ok {
			last = -1
		}
		if seq > last+1 {
			o.t.Errorf("key %s: seq %d handled after %d (skipped ahead)", d.Key, seq, last)
		}
		o.maxSeq[d.Key] = max(last, seq)
		o.byMember[member][d.Partition] = true
		o.mu.Unlock()

		if work.Add(1)%64 == 0 {
			time.Sleep(time.Millisecond) // some handlers are slow, so revocations find work in flight
		}

		o.mu.Lock()
		defer o.mu.Unlock()
		o.active[d.Key] = false
		o.total++
		o.seen[d.ID]++
		if o.seen[d.ID] > 1 {
			o.dups++
		} else if len(o.seen) == o.want {
			close(o.full)
		}
		return nil
	}
}

// TestRebalance: two members of one group consume 20,000 keyed messages
// while they are being published; one member leaves mid-stream. The
// survivor takes over the leaver's partitions from their committed offsets:
// nothing is lost, per-key order holds across the hand-over, and a graceful
// leave (drain, commit, release) produces no duplicate. When the leaving
// member crashes instead (no final commit), the survivor redelivers what the
// crashed member handled after its last periodic commit: duplicates, counted,
// but still no loss and no reordering.
func TestRebalance(t *testing.T) {
	t.Parallel()
	for _, crash := range []bool{false, true} {
		name := "GracefulLeave"
		if crash {
			name = "Crash"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testRebalance(t, crash)
		})
	}
}

func testRebalance(t *testing.T, crash bool) {
	const (
		n         = 20000
		keys      = 200
		leaveAt   = n / 3 // deliveries before the leave, while the first half is consumed
		batchSize = 200
	)
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic, group := testenv.Name(t, "t"), testenv.Name(t, "g")
	k.createTopic(t, topic, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	o := newOrderTracker(t, n)
	var work atomic.Int64
	sub := broker.Subscription{Topic: topic, Group: group, Concurrency: 8}
	other, err := NewSubscriber(testSubConfig(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	leaverBase := ctx
	if crash {
		leaverBase = crashOnStop(ctx)
	}
	leaverCtx, leave := context.WithCancel(leaverBase)
	survivorCtx, stopSurvivor := context.WithCancel(ctx)
	leaverDone, survivorDone := make(chan error, 1), make(chan error, 1)
	go func() { leaverDone <- k.sub.Subscribe(leaverCtx, sub, o.handler(0, &work)) }()
	go func() { survivorDone <- other.Subscribe(survivorCtx, sub, o.handler(1, &work)) }()

	// Once both members own partitions, publish while they consume; the
	// second half waits for the leave, so the survivor has work on every
	// partition afterwards.
	pubDone := make(chan error, 1)
	left := make(chan struct{})
	waitSplit(ctx, t, k.admin, group, 2)
	go func() {
		for i := 0; i < n; i += batchSize {
			if i == n/2 {
				select {
				case <-left:
				case <-ctx.Done():
				}
			}
			batch := make([]broker.Message, 0, batchSize)
			for j := i; j < i+batchSize; j++ {
				key := fmt.Sprintf("key-%03d", j%keys)
				m := broker.NewMessage(topic, []byte(strconv.Itoa(j)))
				m.Key = key
				m.Headers = map[string]string{"seq": strconv.Itoa(j / keys)}
				batch = append(batch, m)
			}
			if err := k.pub.Publish(ctx, batch...); err != nil {
				pubDone <- err
				return
			}
		}
		pubDone <- nil
	}()

	for {
		o.mu.Lock()
		handled, both := o.total, len(o.byMember[0]) > 0 && len(o.byMember[1]) > 0
		o.mu.Unlock()
		if handled >= leaveAt && both {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("handled %d messages, both members active: %v", handled, both)
		case <-time.After(5 * time.Millisecond):
		}
	}
	o.mu.Lock()
	leaverParts := len(o.byMember[0])
	handledAtLeave := o.total
	o.mu.Unlock()
	leave()
	if err := <-leaverDone; err != nil {
		t.Fatalf("leaving member: Subscribe returned %v", err)
	}
	o.mu.Lock()
	o.byMember[1] = map[int32]bool{} // count what the survivor handles from now on
	o.mu.Unlock()
	close(left)

	if err := <-pubDone; err != nil {
		t.Fatalf("publish: %v", err)
	}
	select {
	case <-o.full:
	case <-ctx.Done():
		o.mu.Lock()
		t.Fatalf("survivor: %d of %d distinct messages handled", len(o.seen), n)
	}
	time.Sleep(500 * time.Millisecond) // let late duplicates show
	stopSurvivor()
	if err := <-survivorDone; err != nil {
		t.Fatalf("survivor: Subscribe returned %v", err)
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.seen) != n {
		t.Errorf("distinct messages handled = %d, want %d", len(o.seen), n)
	}
	for k := range keys {
		key := fmt.Sprintf("key-%03d", k)
		if o.maxSeq[key] != n/keys-1 {
			t.Errorf("key %s: highest seq %d, want %d", key, o.maxSeq[key], n/keys-1)
		}
	}
	if len(o.byMember[1]) != 8 {
		t.Errorf("survivor handled %d partitions after the leave, want all 8", len(o.byMember[1]))
	}
	t.Logf("crash=%v: leaver had handled %d partitions and left after %d deliveries; %d deliveries of %d messages, %d duplicates (%.2f%%)",
		crash, leaverParts, handledAtLeave, o.total, n, o.dups, 100*float64(o.dups)/n)
	if !crash && o.dups != 0 {
		t.Errorf("graceful leave produced %d duplicates, want 0", o.dups)
	}
}

// waitSplit waits until group is stable with members members, each owning
// at least one partition.
func waitSplit(ctx context.Context, t *testing.T, a *Admin, group string, members int) {
	t.Helper()
	for {
		gs, err := a.adm.DescribeGroups(ctx, group)
		if err == nil {
			g := gs[group]
			owning := 0
			for _, m := range g.Members {
				if c, ok := m.Assigned.AsConsumer(); ok && len(c.Topics) > 0 && len(c.Topics[0].Partitions) > 0 {
					owning++
				}
			}
			if g.State == "Stable" && len(g.Members) == members && owning == members {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("group %s never split over %d members: %v", group, members, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
