package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// group sets up a topic with one group for sub and returns a publisher and
// the group's queue name.
func group(t *testing.T, url string, sub *rabbitmq.Subscriber, g rabbitmq.Groups, extra ...rabbitmq.Topology) (topic, queue string, pub *rabbitmq.Publisher) {
	t.Helper()
	topic = testenv.Name(t, "t")
	topo, err := sub.Topology(topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	clean := newCleaner(t, url)
	clean.add(topo)
	clean.add(extra...)
	ctx := ctxT(t)
	for _, e := range extra {
		if err := dial(t, url).Declare(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := sub.Setup(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	pub, err = rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	return topic, g.QueueFor(topic, "g"), pub
}

type running struct {
	cancel context.CancelFunc
	done   chan error
}

func start(sub *rabbitmq.Subscriber, s broker.Subscription, h broker.Handler) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- sub.Subscribe(ctx, s, h) }()
	return r
}

func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(time.Minute):
		t.Fatal("Subscribe did not return")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestRejectToDeadLetterExchange: after MaxAttempts failed attempts in
// process the delivery is nacked without requeue, and the broker routes it
// to the queue's dead-letter exchange, with an x-death record.
func TestRejectToDeadLetterExchange(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	dlx, dlq := testenv.Name(t, "dlx"), testenv.Name(t, "dlq")
	g := rabbitmq.Groups{Queue: rabbitmq.Queue{DeadLetterExchange: dlx}}
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: g, MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, g, rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: dlx, Kind: rabbitmq.ExchangeFanout}},
		Queues:    []rabbitmq.Queue{{Name: dlq}},
		Bindings:  []rabbitmq.Binding{{Exchange: dlx, Queue: dlq}},
	})
	bad, good := broker.NewMessage(topic, []byte("bad")), broker.NewMessage(topic, []byte("good"))
	if err := pub.Publish(ctxT(t), bad, good); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var attempts []int
	var goodSeen atomic.Bool
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		if d.ID == good.ID {
			goodSeen.Store(true)
			return nil
		}
		mu.Lock()
		attempts = append(attempts, d.Attempt)
		mu.Unlock()
		return errors.New("poison")
	})
	ch := raw(t, url)
	waitFor(t, "the rejected message in the dead-letter queue", func() bool { return queueDepth(t, ch, dlq) == 1 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if !slices.Equal(attempts, []int{1, 2}) {
		t.Errorf("attempts %v, want [1 2]", attempts)
	}
	mu.Unlock()
	if !goodSeen.Load() {
		t.Errorf("the good message was not handled")
	}
	d, ok, err := ch.Get(dlq, true)
	if err != nil || !ok || d.MessageId != bad.ID {
		t.Fatalf("dead-lettered message: %v %v %v", d.MessageId, ok, err)
	}
	if n := queueDepth(t, ch, queue); n != 0 {
		t.Errorf("group queue still holds %d messages", n)
	}
}

// TestConsumerCancelledWhenQueueDeleted: deleting the queue under a running
// subscription ends Subscribe with ErrConsumerCancelled.
func TestConsumerCancelledWhenQueueDeleted(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, rabbitmq.Groups{})
	got := make(chan struct{}, 1)
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error {
		select {
		case got <- struct{}{}:
		default:
		}
		return nil
	})
	if err := pub.Publish(ctxT(t), broker.NewMessage(topic, nil)); err != nil {
		t.Fatal(err)
	}
	<-got
	if _, err := raw(t, url).QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.done:
		if !errors.Is(err, rabbitmq.ErrConsumerCancelled) {
			t.Fatalf("Subscribe = %v, want ErrConsumerCancelled", err)
		}
		t.Logf("Subscribe returned: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("Subscribe did not return after its queue was deleted")
	}
}

// TestPrefetch: the broker sends a member no more than Prefetch
// unacknowledged deliveries; the rest stay ready in the queue.
func TestPrefetch(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Prefetch: 5})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, rabbitmq.Groups{})
	var batch []broker.Message
	for i := range 20 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = "same"
		batch = append(batch, m)
	}
	if err := pub.Publish(ctxT(t), batch...); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var handled atomic.Int64
	r := start(sub, broker.Subscription{Topic: topic, Group: "g", Concurrency: 1}, func(context.Context, broker.Delivery) error {
		<-release
		handled.Add(1)
		return nil
	})
	ch := raw(t, url)
	waitFor(t, "15 ready messages", func() bool { return queueDepth(t, ch, queue) == 15 })
	time.Sleep(100 * time.Millisecond)
	if n := queueDepth(t, ch, queue); n != 15 {
		t.Errorf("%d messages ready with prefetch 5 of 20, want 15", n)
	}
	close(release)
	waitFor(t, "all handled", func() bool { return handled.Load() == 20 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestSingleActiveConsumer: by default one member of a group receives the
// messages while the other stands by; when the active one stops, the other
// takes over with what is left, in order.
func TestSingleActiveConsumer(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic, _, pub := group(t, url, sub, rabbitmq.Groups{})
	var mu sync.Mutex
	byMember := map[int][]int{}
	h := func(member int) broker.Handler {
		return func(_ context.Context, d broker.Delivery) error {
			var seq int
			fmt.Sscan(string(d.Payload), &seq)
			mu.Lock()
			byMember[member] = append(byMember[member], seq)
			mu.Unlock()
			return nil
		}
	}
	s := broker.Subscription{Topic: topic, Group: "g", Concurrency: 4}
	members := map[int]*running{1: start(sub, s, h(1)), 2: start(sub, s, h(2))}
	publish := func(from, to int) {
		var batch []broker.Message
		for i := from; i < to; i++ {
			m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
			m.Key = "k"
			batch = append(batch, m)
		}
		if err := pub.Publish(ctxT(t), batch...); err != nil {
			t.Fatal(err)
		}
	}
	count := func(m int) int {
		mu.Lock()
		defer mu.Unlock()
		return len(byMember[m])
	}
	publish(0, 50)
	waitFor(t, "the first 50", func() bool { return count(1)+count(2) == 50 })
	active, standby := 1, 2
	if count(2) > 0 {
		active, standby = 2, 1
	}
	if count(standby) != 0 {
		t.Errorf("both members received messages: %d and %d", count(1), count(2))
	}
	if err := members[active].stop(t); err != nil {
		t.Fatal(err)
	}
	publish(50, 100)
	waitFor(t, "the next 50", func() bool { return count(1)+count(2) == 100 })
	if err := members[standby].stop(t); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(byMember[active]) != 50 || len(byMember[standby]) != 50 {
		t.Errorf("active member handled %d, standby %d; want 50 each", len(byMember[active]), len(byMember[standby]))
	}
	all := append(append([]int(nil), byMember[active]...), byMember[standby]...)
	if !slices.IsSorted(all) {
		t.Errorf("key order broken across members: %v", all)
	}
}

// TestCompetingMembers: with Groups.Competing the members of a group share
// the messages.
func TestCompetingMembers(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	g := rabbitmq.Groups{Competing: true}
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: g, Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, g)
	var counts [2]atomic.Int64
	var members []*running
	for i := range 2 {
		members = append(members, start(sub, broker.Subscription{Topic: topic, Group: "g", Concurrency: 1}, func(context.Context, broker.Delivery) error {
			time.Sleep(2 * time.Millisecond)
			counts[i].Add(1)
			return nil
		}))
	}
	ch := raw(t, url)
	waitFor(t, "two consumers", func() bool {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers == 2
	})
	var batch []broker.Message
	for i := range 60 {
		batch = append(batch, broker.NewMessage(topic, []byte(fmt.Sprint(i))))
	}
	if err := pub.Publish(ctxT(t), batch...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all 60", func() bool { return counts[0].Load()+counts[1].Load() == 60 })
	for _, m := range members {
		if err := m.stop(t); err != nil {
			t.Fatal(err)
		}
	}
	if counts[0].Load() == 0 || counts[1].Load() == 0 {
		t.Errorf("members handled %d and %d; want both to share", counts[0].Load(), counts[1].Load())
	}
}

// TestHandlerPanicIsRetried: a panicking handler counts as failed and the
// delivery is retried with the next attempt.
func TestHandlerPanicIsRetried(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic, _, pub := group(t, url, sub, rabbitmq.Groups{})
	if err := pub.Publish(ctxT(t), broker.NewMessage(topic, nil)); err != nil {
		t.Fatal(err)
	}
	got := make(chan int, 1)
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		if d.Attempt == 1 {
			panic("boom")
		}
		got <- d.Attempt
		return nil
	})
	select {
	case a := <-got:
		if a != 2 {
			t.Errorf("attempt after a panic = %d, want 2", a)
		}
	case <-time.After(time.Minute):
		t.Fatal("message lost after a handler panic")
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestDrainTimeoutAndClose: a handler that outlives DrainTimeout sees its
// context cancelled; its failure leaves the message in the queue. Close
// ends running subscriptions with ErrClosed.
func TestDrainTimeoutAndClose(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{DrainTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, rabbitmq.Groups{})
	if err := pub.Publish(ctxT(t), broker.NewMessage(topic, nil)); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(ctx context.Context, _ broker.Delivery) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	<-started
	if err := r.stop(t); err != nil {
		t.Fatalf("Subscribe = %v, want nil", err)
	}
	ch := raw(t, url)
	waitFor(t, "the unacknowledged message back in the queue", func() bool { return queueDepth(t, ch, queue) == 1 })

	r = start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
	waitFor(t, "the message handled", func() bool { return queueDepth(t, ch, queue) == 0 })
	sub.Close()
	select {
	case err := <-r.done:
		if !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Subscribe did not return after Close")
	}
	if err := sub.Subscribe(context.Background(), broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil }); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe on a closed subscriber = %v", err)
	}
}

// TestQuorumGroup: group queues can be quorum queues; a message returned
// to the queue unacknowledged comes back with the broker's delivery count
// in its attempt.
func TestQuorumGroup(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	g := rabbitmq.Groups{Queue: rabbitmq.Queue{Type: rabbitmq.QueueQuorum}}
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: g, DrainTimeout: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	topic, _, pub := group(t, url, sub, g)
	m := broker.NewMessage(topic, []byte("q"))
	m.Headers = map[string]string{"h": "v"}
	if err := pub.Publish(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
	got := make(chan broker.Delivery, 2)
	s := broker.Subscription{Topic: topic, Group: "g"}
	// The first member fails at shutdown without an ack: the message goes
	// back to the queue.
	r := start(sub, s, func(ctx context.Context, d broker.Delivery) error {
		got <- d
		<-ctx.Done()
		return ctx.Err()
	})
	first := <-got
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	r = start(sub, s, func(_ context.Context, d broker.Delivery) error {
		got <- d
		return nil
	})
	var second broker.Delivery
	select {
	case second = <-got:
	case <-time.After(time.Minute):
		t.Fatal("not redelivered")
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if first.ID != m.ID || first.Attempt != 1 || first.Redelivered || len(first.Headers) != 1 || first.Headers["h"] != "v" {
		t.Errorf("first delivery %+v", first)
	}
	if second.ID != m.ID || second.Attempt != 2 || !second.Redelivered || second.Headers[rabbitmq.HeaderDeliveryCount] != "1" {
		t.Errorf("second delivery: attempt %d redelivered %v headers %v; want 2, true, x-delivery-count 1", second.Attempt, second.Redelivered, second.Headers)
	}
}

// TestSingleActiveConsumerTakeover: two members subscribe to the same group
// queue (single active consumer, the default) while a sequence is
// published on several keys. The active member stops (its Subscribe ctx is
// cancelled) in the middle of the stream, with handlers running and its
// prefetch window full of deliveries it has not started, and the standby
// takes over. As Subscriber and the package documentation promise:
//
//   - only one member handles at a time: every handling by the stopped
//     member comes before every handling by the standby;
//   - per-key order holds across the takeover and nothing is lost: each
//     key's handled sequence is 0, 1, ..., n-1, and the queue ends empty;
//   - on a classic queue no message is handed to the group twice (the
//     stopped member acked its successes before closing its channel, and
//     the deliveries it had not started went back to the queue in order).
//     A quorum queue may drop acks sent just before the channel closes
//     (RabbitMQ issue 10327), so there a message handled by the stopped
//     member may be handled again, but only as a redelivery (Redelivered
//     set): the sequence goes back only for those.
func TestSingleActiveConsumerTakeover(t *testing.T) {
	t.Parallel()
	t.Run("classic", func(t *testing.T) {
		t.Parallel()
		testTakeover(t, rabbitmq.Groups{Queue: rabbitmq.Queue{Type: rabbitmq.QueueClassic}}, true)
	})
	t.Run("quorum", func(t *testing.T) {
		t.Parallel()
		testTakeover(t, rabbitmq.Groups{Queue: rabbitmq.Queue{Type: rabbitmq.QueueQuorum}}, false)
	})
}

// testTakeover runs TestSingleActiveConsumerTakeover on a group queue made
// from g. With exactlyOnce every message must be handled once; otherwise a
// message may be handled again as a redelivery of one already handled.
func testTakeover(t *testing.T, g rabbitmq.Groups, exactlyOnce bool) {
	const (
		keys      = 4
		perKey    = 150
		total     = keys * perKey
		upfront   = total / 2     // published once both members consume
		streamed  = 3 * total / 4 // published from then on, during the takeover
		stopAfter = total / 4     // handlings by the active member before it is stopped
	)
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: g})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, g)
	// Message i has key k<i%keys> and sequence number i/keys in its key.
	// Successive Publish calls from one goroutine keep their order.
	publish := func(from, to int) error {
		for ; from < to; from += 25 {
			var batch []broker.Message
			for i := from; i < min(from+25, to); i++ {
				m := broker.NewMessage(topic, []byte(strconv.Itoa(i/keys)))
				m.Key = "k" + strconv.Itoa(i%keys)
				batch = append(batch, m)
			}
			if err := pub.Publish(ctxT(t), batch...); err != nil {
				return err
			}
		}
		return nil
	}

	type handling struct {
		member      int
		key         string
		seq         int
		redelivered bool
	}
	var (
		mu      sync.Mutex
		log     []handling // in the order handlers started
		count   [2]int
		ended   [2]int // per member: len(log) when its latest handler returned
		stopped = -1   // the member whose ctx was cancelled
	)
	var ctxs [2]context.Context
	var cancels [2]context.CancelFunc
	for i := range ctxs {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
		t.Cleanup(cancels[i])
	}
	stopSignal := make(chan int, 1)
	// Handlers wait until the first part is in the queue, so the active
	// member works through a backlog: when it stops, its prefetch window
	// is full of deliveries it has not started.
	backlog := make(chan struct{})
	h := func(member int) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			select {
			case <-backlog:
			case <-ctx.Done():
				return ctx.Err()
			}
			seq, err := strconv.Atoi(string(d.Payload))
			if err != nil {
				t.Errorf("payload %q: %v", d.Payload, err)
				return nil
			}
			defer func() {
				mu.Lock()
				ended[member] = len(log)
				mu.Unlock()
			}()
			mu.Lock()
			log = append(log, handling{member, d.Key, seq, d.Redelivered})
			count[member]++
			stop := count[member] == stopAfter && stopped < 0
			if stop {
				stopped = member
			}
			mu.Unlock()
			if stop {
				// Stop this member in the middle of the stream, with more
				// deliveries in hand, and keep this handler running for a
				// while after the stop: the member must wait for it and
				// ack it before the standby may take over. (No assertion
				// depends on how long.)
				cancels[member]()
				stopSignal <- member
				time.Sleep(50 * time.Millisecond)
			}
			return nil
		}
	}
	var done [2]chan error
	s := broker.Subscription{Topic: topic, Group: "g", Concurrency: keys}
	for i := range done {
		done[i] = make(chan error, 1)
		go func() { done[i] <- sub.Subscribe(ctxs[i], s, h(i)) }()
	}
	wait := func(member int) error {
		select {
		case err := <-done[member]:
			return err
		case <-time.After(time.Minute):
			t.Fatalf("member %d: Subscribe did not return", member)
			return nil
		}
	}
	ch := raw(t, url)
	// Both members are consumers before the active one stops. A classic
	// queue counts the waiting consumer; a quorum queue counts only the
	// active one, so there the standby is merely started, not seen waiting.
	registered := 2
	if g.Queue.Type == rabbitmq.QueueQuorum {
		registered = 1
	}
	waitFor(t, "the members' consumers on the group queue", func() bool {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers == registered
	})
	// Only now is there anything to handle, so the active member cannot
	// stop before both were seen.
	if err := publish(0, upfront); err != nil {
		t.Fatal(err)
	}
	close(backlog)
	pubDone := make(chan error, 1)
	go func() { pubDone <- publish(upfront, streamed) }()

	var active int
	select {
	case active = <-stopSignal:
	case <-time.After(time.Minute):
		t.Fatal("no member handled enough messages")
	}
	standby := 1 - active
	if err := wait(active); err != nil {
		t.Fatalf("stopped member: Subscribe = %v, want nil", err)
	}
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	// The rest is published after the active member stopped: the standby
	// has work whatever the active one got through.
	if err := publish(streamed, total); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every message handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		seen := map[handling]bool{}
		for _, h := range log {
			seen[handling{key: h.key, seq: h.seq}] = true
		}
		return len(seen) == total
	})
	cancels[standby]()
	if err := wait(standby); err != nil {
		t.Fatalf("standby: Subscribe = %v, want nil", err)
	}
	if n := queueDepth(t, ch, queue); n != 0 {
		t.Errorf("queue holds %d messages after both members stopped; every handled message should have been acked", n)
	}

	mu.Lock()
	defer mu.Unlock()
	firstStandby := slices.IndexFunc(log, func(h handling) bool { return h.member == standby })
	if firstStandby < 0 {
		t.Fatalf("the standby handled nothing (the stopped member handled %d)", count[active])
	}
	if i := slices.IndexFunc(log[firstStandby:], func(h handling) bool { return h.member == active }); i >= 0 {
		t.Errorf("handling %d by the stopped member started after the standby's first handling (%d): two members were active at once", firstStandby+i, firstStandby)
	}
	if ended[active] > firstStandby {
		t.Errorf("the stopped member's last handler returned after %d handlings started, the standby's first was handling %d: the standby took over while the stopped member was still handling", ended[active], firstStandby)
	}
	perKeyLog := map[string][]handling{}
	for _, h := range log {
		perKeyLog[h.key] = append(perKeyLog[h.key], h)
	}
	again := 0 // handlings of a message already handled
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		next := 0 // the lowest sequence number not handled yet
		bad := false
		var seqs []int
		for _, h := range perKeyLog[key] {
			seqs = append(seqs, h.seq)
			switch {
			case h.seq == next:
				next++
			case h.seq < next && h.redelivered && !exactlyOnce:
				again++
			case bad: // report the first violation of each key only
			case h.seq < next:
				bad = true
				t.Errorf("key %s: message %d handled again (redelivered %v) after %d", key, h.seq, h.redelivered, next-1)
			default:
				bad = true
				t.Errorf("key %s: message %d handled before %d", key, h.seq, next)
			}
		}
		if next != perKey {
			bad = true
			t.Errorf("key %s: messages %d..%d never handled", key, next, perKey-1)
		}
		if bad {
			t.Logf("key %s handled in this order: %v", key, seqs)
		}
	}
	if len(log) != total+again {
		t.Errorf("%d handlings for %d messages (%d handled again)", len(log), total, again)
	}
	redelivered := 0
	for _, h := range log[firstStandby:] {
		if h.redelivered {
			redelivered++
		}
	}
	t.Logf("stopped member handled %d, standby %d; %d redeliveries (what the stopped member left unacked), %d of them already handled",
		count[active], count[standby], redelivered, again)
}
