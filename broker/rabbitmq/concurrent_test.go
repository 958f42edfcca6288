package rabbitmq_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestPublishConcurrentSharesWindow: concurrent one-message Publish calls
// on a one-channel publisher are in flight together, each matched to its
// own confirm by delivery tag, instead of taking turns to publish and wait.
// While the proxy holds back everything the broker sends (confirms and
// returns among it), all 16 calls reach the broker and none returns; once
// released, each call gets its own outcome: the unroutable message is that
// call's error and only that call's, the others return nil, and the queue
// holds each of their messages once.
func TestPublishConcurrentSharesWindow(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	px := newProxy(t, url)
	conn := dial(t, px.url)
	ex, q := boundQueue(t, url, conn, "k")
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1, NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	// Opens the channel (confirm.select waits for the broker's answer,
	// which hold would keep back).
	if err := pub.Publish(ctx, keyed(ex)); err != nil {
		t.Fatal(err)
	}
	ch := raw(t, url)
	base := queueDepth(t, ch, q)

	const calls, unroutable = 16, 7
	msgs := make([]broker.Message, calls)
	for i := range msgs {
		msgs[i] = keyed(ex)
		if i == unroutable {
			msgs[i].Key = "nobody"
		}
	}
	px.hold()
	errs := make([]error, calls)
	var returned atomic.Int32
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = pub.Publish(ctx, msgs[i])
			returned.Add(1)
		}()
	}
	waitFor(t, "every routable message of the concurrent calls to reach the queue, confirms held back", func() bool {
		return queueDepth(t, ch, q) == base+calls-1
	})
	if n := returned.Load(); n != 0 {
		t.Fatalf("%d calls returned before any confirm reached the client", n)
	}
	px.unhold()
	wg.Wait()

	for i, err := range errs {
		if i != unroutable {
			if err != nil {
				t.Errorf("call %d: %v", i, err)
			}
			continue
		}
		var pe *broker.PublishError
		switch {
		case !errors.Is(err, rabbitmq.ErrUnroutable):
			t.Errorf("unroutable call: got %v, want ErrUnroutable", err)
		case !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != msgs[i].ID:
			t.Errorf("unroutable call: %v does not name its message %s", err, msgs[i].ID)
		}
	}
	if got := queueDepth(t, ch, q); got != base+calls-1 {
		t.Errorf("queue holds %d messages, want %d", got, base+calls-1)
	}
}

// TestPublishConcurrentNacks: a nack is the error of the call whose message
// it names. 16 concurrent one-message calls on one channel publish to a
// queue that holds 8 messages and rejects the rest (x-overflow
// reject-publish, which the broker answers with basic.nack): exactly 8
// calls return nil, exactly the messages in the queue, and each of the 8
// others returns ErrNacked naming its own message.
func TestPublishConcurrentNacks(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	const calls, room = 16, 8
	ch := raw(t, url)
	ex, q := testenv.Name(t, "x"), testenv.Name(t, "q")
	if err := ch.ExchangeDeclare(ex, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ch := raw(t, url)
		_, _ = ch.QueueDelete(q, false, false, false)
		_ = ch.ExchangeDelete(ex, false, false)
	})
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-max-length": int32(room), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q, "k", ex, false, nil); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{Channels: 1, NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	msgs := make([]broker.Message, calls)
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range msgs {
		msgs[i] = keyed(ex)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = pub.Publish(ctx, msgs[i])
		}()
	}
	wg.Wait()
	ok := map[string]bool{}
	for i, err := range errs {
		if err == nil {
			ok[msgs[i].ID] = true
			continue
		}
		var pe *broker.PublishError
		if !errors.Is(err, rabbitmq.ErrNacked) || !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].ID != msgs[i].ID {
			t.Errorf("call %d: got %v, want ErrNacked naming %s", i, err, msgs[i].ID)
		}
	}
	if len(ok) != room {
		t.Errorf("%d calls succeeded, want %d (the queue's room)", len(ok), room)
	}
	deliveries, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range room {
		select {
		case d := <-deliveries:
			if !ok[d.MessageId] {
				t.Errorf("message %s is in the queue but its call did not return nil", d.MessageId)
			}
		case <-time.After(time.Minute):
			t.Fatal("queue holds fewer messages than succeeded calls")
		}
	}
}

// TestPublishConcurrentConnectionLoss: 16 goroutines publish one message per
// call, each on a key of its own, and the connection is cut while every one
// of them has a call in flight whose message the broker holds and whose
// confirm the client has not seen. Every call still returns nil (its ctx
// does not end): the unconfirmed messages are sent again after the
// reconnect. The queue then holds every message, the duplicates are at
// most the messages in flight at the cuts, and each caller's messages are
// in the order it published them (counting each message where it first
// appears).
func TestPublishConcurrentConnectionLoss(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	px := newProxy(t, url)
	conn := dial(t, px.url)
	t.Cleanup(func() { conn.Close() })
	ex, q := testenv.Name(t, "x"), testenv.Name(t, "q")
	topo := rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: ex, Kind: rabbitmq.ExchangeTopic}},
		Queues:    []rabbitmq.Queue{{Name: q}},
		Bindings:  []rabbitmq.Binding{{Exchange: ex, Queue: q, Key: "#"}},
	}
	newCleaner(t, url).add(topo)
	if err := conn.Declare(ctx, topo); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	ch := raw(t, url)

	const (
		callers = 16
		rounds  = 2
	)
	var (
		mu        sync.Mutex
		confirmed = map[string]string{} // message ID -> key
		sent      [callers]int          // calls made per caller
		failed    []error
		stop      atomic.Bool
		wg        sync.WaitGroup
	)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := "c" + strconv.Itoa(c)
			for seq := 0; !stop.Load(); seq++ {
				m := broker.NewMessage(ex, nil)
				m.Key = key
				m.Headers = map[string]string{"seq": strconv.Itoa(seq)}
				err := pub.Publish(ctx, m)
				mu.Lock()
				sent[c]++
				if err != nil {
					failed = append(failed, err)
				} else {
					confirmed[m.ID] = key
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	calls := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, s := range sent {
			n += s
		}
		if len(failed) > 0 {
			t.Fatalf("a Publish call failed (its ctx had not ended): %v", failed[0])
		}
		return n
	}
	for round := range rounds {
		// Calls go through on the current connection.
		n := calls()
		waitFor(t, fmt.Sprintf("calls to succeed before cut %d", round+1), func() bool { return calls() >= n+2*callers })
		px.hold()
		// Each caller has one call in flight, sent before or after the
		// hold began: the queue stops growing once all of them arrived.
		// Wait for that, so that at least the calls sent after the hold
		// are in flight with a message the broker holds.
		depth := queueDepth(t, ch, q)
		waitFor(t, "the calls in flight to reach the queue", func() bool {
			time.Sleep(100 * time.Millisecond)
			d := queueDepth(t, ch, q)
			steady := d == depth
			depth = d
			return steady
		})
		held := calls()
		px.cut()
		t.Logf("cut %d: %d calls completed, up to %d in flight", round+1, held, callers)
	}
	n := calls()
	waitFor(t, "calls to succeed after the last cut", func() bool { return calls() >= n+2*callers })
	stop.Store(true)
	wg.Wait()
	calls()

	// Read the queue: every confirmed message, at most callers*rounds
	// duplicates, per-key order of first appearances.
	total := queueDepth(t, ch, q)
	deliveries, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	last := map[string]int{} // key -> last seq seen first-time
	dups := 0
	timeout := time.After(time.Minute)
	for range total {
		var d amqp.Delivery
		select {
		case d = <-deliveries:
		case <-timeout:
			t.Fatalf("only %d of %d messages consumed", len(seen), total)
		}
		seen[d.MessageId]++
		if seen[d.MessageId] > 1 {
			dups++
			continue
		}
		s, _ := d.Headers["seq"].(string)
		seq, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("message %s: seq header %q", d.MessageId, s)
		}
		if prev, ok := last[d.RoutingKey]; ok && seq <= prev {
			t.Errorf("key %s: message %d after message %d", d.RoutingKey, seq, prev)
		}
		last[d.RoutingKey] = seq
	}
	for id := range seen {
		if _, ok := confirmed[id]; !ok {
			t.Errorf("message %s is in the queue but no successful call sent it", id)
		}
	}
	missing := 0
	for id := range confirmed {
		if seen[id] == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d confirmed messages are missing from the queue", missing, len(confirmed))
	}
	if dups > callers*rounds {
		t.Errorf("%d duplicates, more than the %d messages in flight at the cuts", dups, callers*rounds)
	}
	t.Logf("%d confirmed messages, queue held %d (%d duplicates)", len(confirmed), total, dups)
}
