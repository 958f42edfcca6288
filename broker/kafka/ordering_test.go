package kafka

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestOrderPerPartition: with OrderPerPartition one message of a partition
// runs at a time, in offset order, whatever the keys; partitions still run
// in parallel.
func TestOrderPerPartition(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, func(c *SubscriberConfig) { c.Ordering = OrderPerPartition })
	topic := testenv.Name(t, "t")
	k.createTopic(t, topic, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 300
	var msgs []broker.Message
	for i := range n {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("k%d", i%30)
		if i%7 == 0 {
			m.Key = "" // keyless messages are ordered by partition too
		}
		msgs = append(msgs, m)
	}
	if err := k.pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex
		busy      = map[int32]bool{}
		last      = map[int32]int64{}
		seen      int
		firstPart = int32(-1)
		other     = make(chan struct{}) // closed when a second partition runs
		otherRan  bool
	)
	all := make(chan struct{})
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g"), Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			if busy[d.Partition] {
				t.Errorf("partition %d: two handlers at once", d.Partition)
			}
			if prev, ok := last[d.Partition]; ok && d.Offset <= prev {
				t.Errorf("partition %d: offset %d after %d", d.Partition, d.Offset, prev)
			}
			busy[d.Partition], last[d.Partition] = true, d.Offset
			wait := false
			switch {
			case firstPart < 0:
				firstPart, wait = d.Partition, true
			case d.Partition != firstPart && !otherRan:
				otherRan = true
				close(other)
			}
			mu.Unlock()
			if wait {
				// The first partition's first message waits until another
				// partition runs: partitions must not wait for each other.
				select {
				case <-other:
				case <-time.After(30 * time.Second):
					t.Errorf("no other partition ran while partition %d was busy", d.Partition)
				}
			}
			time.Sleep(200 * time.Microsecond)
			mu.Lock()
			defer mu.Unlock()
			busy[d.Partition] = false
			if seen++; seen == n {
				close(all)
			}
			return nil
		})
	}()
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatal("not every message handled")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestChainSweep drives a member's queue directly: a key whose messages all
// finished keeps its (idle) chain, so a message of it that comes back queues
// behind nothing; a partition that saw many keys drops the idle chains when
// its map grows, while a chain with unfinished messages survives the sweep
// and keeps its order.
func TestChainSweep(t *testing.T) {
	m := newTestMember(t, 0)
	p := m.parts[0]
	off := int64(0)
	add := func(key string) *item {
		it := new(item)
		if !m.add(it, &kgo.Record{Topic: "t", Key: []byte(key), Offset: off}) {
			t.Fatalf("item %d not queued", off)
		}
		off++
		return it
	}
	run := func(it *item) {
		if got := m.popReady(); got != it {
			t.Fatalf("ready item is offset %v, want %d", got, it.off)
		}
		it.state = stRunning
		m.complete(it, nil)
	}

	// A blocked key: its head runs only at the end.
	m.mu.Lock()
	defer m.mu.Unlock()
	held := add("held")
	heldNext := add("held")
	if m.popReady() != held {
		t.Fatal("first message of a key is not ready")
	}
	held.state = stRunning
	for i := range 3 * minSweep {
		run(add(fmt.Sprintf("k%d", i)))
	}
	if n := len(p.chains); n > 2*minSweep {
		t.Fatalf("%d chains kept after %d keys went idle; sweeping keeps at most %d", n, 3*minSweep, 2*minSweep)
	}
	c := p.chains[m.keyHash([]byte("held"))]
	if c == nil || c.head != held || c.tail != heldNext || heldNext.state != stQueued {
		t.Fatal("the sweep dropped or changed a chain with unfinished messages")
	}
	again := add("k1") // idle or swept: runs at once either way
	run(again)
	m.complete(held, nil)
	run(heldNext)
	if p.live != 0 || p.next.Offset != off {
		t.Fatalf("live %d, commit point %d; want 0 and %d", p.live, p.next.Offset, off)
	}
	if c := p.chains[m.keyHash([]byte("held"))]; c == nil || c.head != nil {
		t.Fatal("a key whose messages finished should keep an idle chain")
	}
}

// TestMaxBufferedRecords: a member never holds more unfinished messages than
// MaxBufferedRecords, so with every handler stuck no further handler starts
// even though more workers are idle and more messages are fetched; once the
// handlers return, the rest follow and each message is handled once.
func TestMaxBufferedRecords(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	const limit, n = 5, 60
	k := newKit(t, brokers, func(c *SubscriberConfig) { c.MaxBufferedRecords = limit })
	topic := testenv.Name(t, "t")
	k.createTopic(t, topic, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var msgs []broker.Message
	for i := range n {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		if i%2 == 0 {
			m.Key = fmt.Sprintf("k%d", i) // distinct keys run in parallel, as keyless ones do
		}
		msgs = append(msgs, m)
	}
	if err := k.pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		running  int
		maxRun   int
		started  = make(chan struct{}, n)
		release  = make(chan struct{})
		seen     = map[string]int{}
		finished = make(chan struct{})
	)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g"), Concurrency: 16}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			running++
			maxRun = max(maxRun, running)
			mu.Unlock()
			started <- struct{}{}
			select {
			case <-release:
			case <-sctx.Done(): // the test failed and stops
			}
			mu.Lock()
			defer mu.Unlock()
			running--
			if seen[d.Message.ID]++; len(seen) == n {
				close(finished)
			}
			return nil
		})
	}()
	for range limit {
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatalf("fewer than %d handlers started", limit)
		}
	}
	select {
	case <-started:
		t.Fatalf("a handler started while %d messages were unfinished (MaxBufferedRecords %d)", limit, limit)
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	select {
	case <-finished:
	case <-ctx.Done():
		t.Fatalf("%d of %d messages handled", len(seen), n)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if maxRun > limit {
		t.Errorf("%d handlers ran at once; MaxBufferedRecords is %d", maxRun, limit)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("message %s handled %d times", id, c)
		}
	}
}
