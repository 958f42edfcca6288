package kafka

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// newTestMember returns a member of group "g" on topic "t" that owns parts
// and talks to no cluster, for tests that drive its queue directly.
func newTestMember(t *testing.T, parts ...int32) *member {
	t.Helper()
	s, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: []string{"127.0.0.1:1"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	m, err := newMember(s, brokerimpl.WithDefaults(broker.Subscription{Topic: "t", Group: "g"}),
		func(context.Context, broker.Delivery) error { return nil }, context.Background(), new(recordPool))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.cl.Close)
	m.onAssigned(context.Background(), nil, map[string][]int32{"t": parts})
	return m
}

// TestRecordPool: new slices are rounded up so they fit somewhat larger
// batches later, and a slice put back is lent again when it fits.
func TestRecordPool(t *testing.T) {
	for _, c := range []struct{ n, want int }{{0, 16}, {1, 16}, {16, 16}, {17, 32}, {40, 64}, {64, 64}, {65, 128}, {1500, 1536}} {
		if got := roundUp(c.n); got != c.want {
			t.Errorf("roundUp(%d) = %d, want %d", c.n, got, c.want)
		}
	}
	var rp recordPool
	s := rp.GetRecords(100)
	if len(s) != 0 || cap(s) != 128 {
		t.Fatalf("GetRecords(100): len %d cap %d, want 0 and 128", len(s), cap(s))
	}
	rp.PutRecords(s[:100])
	// sync.Pool may drop what it holds at any time (a collection, another
	// P), so only a slice that comes back is checked: emptied.
	if again := rp.GetRecords(120); &again[:1][0] == &s[:1][0] && len(again) != 0 {
		t.Fatalf("the slice put back is lent again with length %d", len(again))
	}
	var cp countingPool
	first := cp.GetRecords(10)
	cp.PutRecords(first)
	if again := cp.GetRecords(10); (cp.Reused() == 1) != (&again[:1][0] == &first[:1][0]) {
		t.Fatalf("countingPool counted %d reuses; the slice came back: %v", cp.Reused(), &again[:1][0] == &first[:1][0])
	}
	if big := rp.GetRecords(200); cap(big) < 200 {
		t.Fatalf("GetRecords(200) has capacity %d", cap(big))
	}
}

// TestDeliveriesStayIntact: the Subscriber reuses the memory franz-go decodes
// a batch's records into once every record of it is finished. A handler may
// keep what it was handed, and a failed message is handed over again later
// (decoded again from its record, which is not finished meanwhile), so
// this test fails some messages twice while thousands of others stream past
// in many small batches, keeps every delivery, and checks them all at the
// end against what was published.
func TestDeliveriesStayIntact(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "intact")
	k.createTopic(t, topic, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute) // generous: 20,000 messages under -race on a loaded machine
	defer cancel()

	const n, per = 20_000, 50
	sent := make(map[string]broker.Message, n)
	var batches [][]broker.Message
	for first := 0; first < n; first += per {
		msgs := make([]broker.Message, per)
		for i := range msgs {
			x := first + i
			msgs[i] = broker.Message{
				Topic:   topic,
				ID:      fmt.Sprintf("id-%d", x),
				Key:     "key-" + strconv.Itoa(x%37),
				Payload: fmt.Appendf(nil, "payload %d %x", x, x*7919),
				Headers: map[string]string{"n": strconv.Itoa(x)},
			}
			sent[msgs[i].ID] = msgs[i]
		}
		batches = append(batches, msgs)
	}

	var (
		mu   sync.Mutex
		kept []broker.Delivery
		done = make(map[string]bool)
		all  = make(chan struct{})
	)
	// Run the member the way Subscribe does, with a pool that counts reuses.
	pool := new(countingPool)
	m, err := newMember(k.sub, brokerimpl.WithDefaults(broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}),
		func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			kept = append(kept, d)
			if x, _ := strconv.Atoi(d.Message.Headers["n"]); x%101 == 0 && d.Attempt < 3 {
				return fmt.Errorf("fail attempt %d", d.Attempt)
			}
			done[d.Message.ID] = true
			if len(done) == n {
				close(all)
			}
			return nil
		}, ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		m.run(ctx)
	}()
	// Publish while the member consumes, so it fetches batch after batch
	// while earlier ones finish.
	for _, msgs := range batches {
		if err := k.pub.Publish(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-ctx.Done():
		mu.Lock()
		t.Fatalf("%d of %d messages handled", len(done), n)
	}
	cancel()
	<-stopped
	if reused := pool.Reused(); reused == 0 {
		t.Fatal("no record slice was reused: the test did not exercise the pool")
	} else {
		t.Logf("record slices reused %d times", reused)
	}

	mu.Lock()
	defer mu.Unlock()
	retried := 0
	for _, d := range kept {
		want, ok := sent[d.Message.ID]
		switch {
		case !ok:
			t.Fatalf("delivery with unknown ID %q (offset %d)", d.Message.ID, d.Offset)
		case d.Message.Key != want.Key || string(d.Message.Payload) != string(want.Payload) ||
			len(d.Message.Headers) != 1 || d.Message.Headers["n"] != want.Headers["n"]:
			t.Fatalf("delivery of %s (attempt %d) changed: got key %q, payload %q, headers %v; published key %q, payload %q, headers %v",
				want.ID, d.Attempt, d.Message.Key, d.Message.Payload, d.Message.Headers, want.Key, want.Payload, want.Headers)
		}
		if d.Attempt > 1 {
			retried++
		}
	}
	if want := 2 * (1 + (n-1)/101); retried != want {
		t.Fatalf("%d retried deliveries, want %d", retried, want)
	}
}
