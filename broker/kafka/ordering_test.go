package kafka

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
