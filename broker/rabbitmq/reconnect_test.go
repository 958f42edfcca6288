package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestPublishResendsAfterConnectionLoss: Publish calls in flight when the
// connection drops do not fail. The messages the broker had not confirmed
// are sent again on the next connection, and since the callers' ctx does
// not end, every call returns nil; every message of every call is then in
// the queue, some possibly twice (a message the broker enqueued but whose
// confirm was lost with the connection).
func TestPublishResendsAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	t.Run("cut", func(t *testing.T) {
		// The connection is cut under the client, as by a network failure.
		// Each round holds back the broker's confirms, publishes a probe
		// call and waits until the broker has enqueued a message sent after
		// the hold began, then cuts: the probe, at least, is in flight at
		// the cut, with a message the broker holds and the client does not
		// know it holds.
		t.Parallel()
		url := testenv.RabbitMQURL(t)
		px := newProxy(t, url)
		ch := raw(t, url)
		publishThroughDrops(t, url, dial(t, px.url), 3, func(h *dropHarness) {
			holdInFlight(t, px, ch, h)
			h.mark()
			px.cut()
		})
	})
	t.Run("silent", func(t *testing.T) {
		// The connection goes silent instead (a peer or a network path
		// that died without a word): only missed heartbeats tell, and the
		// client's writes block meanwhile. As with cut, a probe is in
		// flight with a message the broker holds.
		t.Parallel()
		url := testenv.RabbitMQURL(t)
		px := newProxy(t, url)
		ch := raw(t, url)
		conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: time.Second})
		publishThroughDrops(t, url, conn, 2, func(h *dropHarness) {
			holdInFlight(t, px, ch, h)
			h.mark()
			px.freeze()
		})
	})
	t.Run("restart", func(t *testing.T) {
		// The broker closes the connection (CONNECTION_FORCED) and stays
		// away for seconds while the calls go on.
		t.Parallel()
		url, restart := testenv.PrivateRabbitMQ(t)
		publishThroughDrops(t, url, dial(t, url), 2, func(h *dropHarness) {
			h.mark()
			if err := restart(h.ctx); err != nil {
				t.Fatalf("restart: %v", err)
			}
		})
	})
}

// pubCall is the record of one Publish call of publishThroughDrops.
type pubCall struct {
	ids    []string
	err    error
	drops0 int64 // drops marked before the call started
	drops1 int64 // drops marked when it had returned
	probe  bool
}

// dropHarness is what a drop function of publishThroughDrops gets.
type dropHarness struct {
	ctx   context.Context
	queue string
	probe func() // starts one more Publish call, recorded like the others
	mark  func() // counts a drop; call it just before the connection drops
}

// holdInFlight makes sure a Publish call is in flight with a message the
// broker holds and the client does not know it holds: it holds back what
// the broker sends, starts a probe call and waits until the queue grows.
func holdInFlight(t *testing.T, px *proxy, ch *amqp.Channel, h *dropHarness) {
	t.Helper()
	px.hold()
	base := queueDepth(t, ch, h.queue)
	h.probe()
	waitFor(t, "the broker to enqueue a message whose confirm is held back", func() bool {
		return queueDepth(t, ch, h.queue) > base
	})
}

// publishThroughDrops keeps publishing batches in several goroutines, on
// conn, to a durable queue of the node of url, while drop makes the
// connection drop rounds times (waiting in between until calls started
// after the previous drop succeed). It then checks that every call
// returned nil, that at least one call was in flight at each drop when
// probes were used, and that every message published is in the queue.
func publishThroughDrops(t *testing.T, url string, conn *rabbitmq.Conn, rounds int, drop func(*dropHarness)) {
	t.Helper()
	const (
		publishers = 4
		batchSize  = 20
		progress   = 3 // successful calls needed after each drop
	)
	ctx := ctxT(t)
	ex, q := boundQueue(t, url, conn, "k")
	// Closed before the cleaner deletes the queue, which conn would
	// otherwise declare again if it were reconnecting then.
	t.Cleanup(func() { conn.Close() })
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 2, NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	// Probes have a publisher of their own, whose one channel is open on
	// the current connection before each drop (a call on it succeeded
	// since the previous one): a probe sends at once, without waiting for
	// an answer from the broker, which hold would keep back.
	probePub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1, NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}

	var (
		drops atomic.Int64
		mu    sync.Mutex
		calls []*pubCall
		fails int
		stop  atomic.Bool
		wg    sync.WaitGroup
	)
	publish := func(pub *rabbitmq.Publisher, n int, probe bool) bool {
		batch := make([]broker.Message, n)
		c := &pubCall{probe: probe, drops0: drops.Load()}
		for i := range batch {
			batch[i] = broker.NewMessage(ex, nil)
			batch[i].Key = "k"
			c.ids = append(c.ids, batch[i].ID)
		}
		c.err = pub.Publish(ctx, batch...)
		c.drops1 = drops.Load()
		mu.Lock()
		calls = append(calls, c)
		if c.err != nil {
			fails++
		}
		mu.Unlock()
		return c.err == nil
	}
	t.Cleanup(func() {
		stop.Store(true)
		wg.Wait()
	})
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A short pause between calls keeps the volume (and the queue
			// read at the end) small on a slow machine; calls are still in
			// flight whenever the connection drops.
			for !stop.Load() && publish(pub, batchSize, false) {
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	// waitProgress waits for calls started after drop n to succeed, and
	// fails the test as soon as a call fails.
	waitProgress := func(n int64) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%d successful calls started after drop %d", progress, n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			if fails > 0 {
				for _, c := range calls {
					if c.err != nil {
						t.Fatalf("a Publish call failed (its ctx had not ended): %v", c.err)
					}
				}
			}
			ok := 0
			for _, c := range calls {
				if c.err == nil && c.drops0 == n {
					ok++
				}
			}
			return ok >= progress
		})
	}
	h := &dropHarness{
		ctx:   ctx,
		queue: q,
		probe: func() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				publish(probePub, 1, true)
			}()
		},
		mark: func() { drops.Add(1) },
	}
	for round := range int64(rounds) {
		waitProgress(round)
		if !publish(probePub, 1, false) {
			t.Fatal("the probe publisher failed")
		}
		drop(h)
		if got := drops.Load(); got != round+1 {
			t.Fatalf("drop %d marked %d drops", round+1, got-round)
		}
	}
	waitProgress(int64(rounds))
	stop.Store(true)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	published := map[string]bool{}
	spanning := make([]int, rounds+1) // calls in flight at drop k
	probes := 0
	for _, c := range calls {
		if c.err != nil {
			t.Errorf("Publish call (probe %v) failed across %d drop(s): %v", c.probe, c.drops1-c.drops0, c.err)
			continue
		}
		for k := c.drops0 + 1; k <= c.drops1; k++ {
			spanning[k]++
		}
		if c.probe {
			probes++
		}
		for _, id := range c.ids {
			published[id] = true
		}
	}
	for k := 1; k <= rounds; k++ {
		if probes > 0 && spanning[k] == 0 {
			t.Errorf("no Publish call was in flight at drop %d", k)
		}
	}
	t.Logf("%d calls, %d messages; calls in flight at each drop: %v", len(calls), len(published), spanning[1:])

	// Every message of every call is in the queue, at least once.
	ch := raw(t, url)
	n := queueDepth(t, ch, q)
	seen := make(map[string]int, n)
	deliveries, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(time.Minute)
	for range n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				t.Fatal("consumer closed")
			}
			seen[d.MessageId]++
		case <-timeout:
			t.Fatalf("only %d of %d messages consumed", len(seen), n)
		}
	}
	dups := 0
	for id, c := range seen {
		if !published[id] {
			t.Errorf("message %s is in the queue but no successful Publish call sent it", id)
		}
		dups += c - 1
	}
	missing := 0
	for id := range published {
		if seen[id] == 0 {
			missing++
			if missing <= 5 {
				t.Errorf("message %s: Publish returned nil but it is not in the queue", id)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d confirmed messages are missing from the queue", missing, len(published))
	}
	t.Logf("queue holds %d messages: %d distinct, %d duplicates (resent after a lost confirm)", n, len(seen), dups)
}

// loggedErrors returns the error attributes of the records logs kept at
// level or above.
func loggedErrors(logs *testenv.LogRecorder, level slog.Level) []error {
	var errs []error
	for _, rec := range logs.Records() {
		if rec.Level < level {
			continue
		}
		rec.Attrs(func(a slog.Attr) bool {
			if err, ok := a.Value.Any().(error); ok {
				errs = append(errs, err)
			}
			return true
		})
	}
	return errs
}

// TestRedeclareAfterReconnect: after a reconnect, Conn declares again
// every topology declared through it before it hands out a channel, so
// calls waiting for the connection work at once. The node restarts while
// the connection is kept down (by a proxy), which drops the transient
// exchanges and queues declared through the Conn; behind its back, a
// durable exchange is deleted and a queue is re-created with conflicting
// properties. Publish calls issued during the outage (with NoDeclare, so a
// missing exchange is ErrNotFound rather than declared by the publisher)
// succeed and reach every queue bound before the outage, and a running
// Subscribe resumes on its transient group queue instead of failing with
// NOT_FOUND. The conflict is logged and skipped: the entities declared
// after it are declared all the same.
func TestRedeclareAfterReconnect(t *testing.T) {
	t.Parallel()
	url, restart := testenv.PrivateRabbitMQ(t)
	ctx := ctxT(t)
	px := newProxy(t, url)
	logs := &testenv.LogRecorder{}
	conn := dialConfig(t, rabbitmq.Config{URL: px.url, Logger: slog.New(logs)})

	// Declared first: re-declaring it fails, and the rest must follow.
	conflict := testenv.Name(t, "conflict")
	if err := conn.Declare(ctx, rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: conflict, Transient: true}}}); err != nil {
		t.Fatal(err)
	}
	// A group on a durable exchange (deleted behind the Conn's back) with
	// a transient queue (lost by the restart).
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{
		Groups: rabbitmq.Groups{Queue: rabbitmq.Queue{Transient: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	topic := testenv.Name(t, "t")
	if err := sub.Setup(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	// A transient fanout exchange with transient queues: the bindings are
	// the last entities declared again.
	fan := testenv.Name(t, "fan")
	fanTopo := rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{Name: fan, Kind: rabbitmq.ExchangeFanout, Transient: true}}}
	var fanQueues []string
	for i := range 8 {
		q := fmt.Sprintf("%s.%d", fan, i)
		fanQueues = append(fanQueues, q)
		fanTopo.Queues = append(fanTopo.Queues, rabbitmq.Queue{Name: q, Transient: true})
		fanTopo.Bindings = append(fanTopo.Bindings, rabbitmq.Binding{Exchange: fan, Queue: q})
	}
	if err := conn.Declare(ctx, fanTopo); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })

	received := make(chan string, 16)
	run := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		received <- d.ID
		return nil
	})
	awaitDelivery := func(id string) {
		t.Helper()
		timeout := time.After(time.Minute)
		for {
			select {
			case got := <-received:
				if got == id {
					return
				}
			case err := <-run.done:
				t.Fatalf("Subscribe returned while waiting for message %s: %v", id, err)
			case <-timeout:
				t.Fatalf("message %s not delivered", id)
			}
		}
	}
	before := broker.NewMessage(topic, []byte("before"))
	if err := pub.Publish(ctx, before, broker.NewMessage(fan, nil)); err != nil {
		t.Fatal(err)
	}
	awaitDelivery(before.ID)

	// The Conn's connection drops and cannot come back while the node
	// restarts and the topology is changed behind its back.
	px.down()
	if err := restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	conn2, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	channel := func() *amqp.Channel {
		t.Helper()
		ch, err := conn2.Channel()
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	if err := channel().ExchangeDelete(topic, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := channel().QueueDeclare(conflict, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// What the Conn declared is gone (the conflicting queue aside).
	gone := func(what, name string, declare func(ch *amqp.Channel) error) {
		t.Helper()
		ch := channel()
		defer ch.Close()
		var ae *amqp.Error
		if err := declare(ch); !errors.As(err, &ae) || ae.Code != amqp.NotFound {
			t.Fatalf("%s %q before the reconnect: %v, want NOT_FOUND", what, name, err)
		}
	}
	for _, ex := range []string{topic, fan} {
		gone("exchange", ex, func(ch *amqp.Channel) error {
			return ch.ExchangeDeclarePassive(ex, "topic", false, false, false, false, nil)
		})
	}
	groupQueue := rabbitmq.Groups{}.QueueFor(topic, "g")
	for _, q := range append([]string{groupQueue}, fanQueues...) {
		gone("queue", q, func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
			return err
		})
	}

	// Issued while the connection is down, these calls wait for it and
	// run as soon as the Conn hands out channels again.
	during := broker.NewMessage(topic, []byte("during"))
	errs := make(chan error, 2)
	go func() { errs <- pub.Publish(ctx, during) }()
	go func() { errs <- pub.Publish(ctx, broker.NewMessage(fan, nil)) }()
	px.up()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("Publish issued during the outage: %v", err)
		}
	}
	awaitDelivery(during.ID)

	ch := channel()
	for _, q := range fanQueues {
		if n := queueDepth(t, ch, q); n != 1 {
			t.Errorf("queue %q holds %d messages after the reconnect, want 1", q, n)
		}
	}
	// The conflicting queue keeps the broker's definition (durable).
	if _, err := ch.QueueDeclare(conflict, true, false, false, false, nil); err != nil {
		t.Errorf("queue %q is not durable any more: %v", conflict, err)
	}
	logged := false
	for _, err := range loggedErrors(logs, slog.LevelWarn) {
		if errors.Is(err, rabbitmq.ErrTopologyConflict) {
			logged = true
			t.Logf("logged: %v", err)
		}
	}
	if !logged {
		t.Error("the conflict found while declaring again was not logged")
	}
	if err := run.stop(t); err != nil {
		t.Errorf("Subscribe: %v", err)
	}
}

// TestReconnectBackoff: a broker that accepts connections and drops each
// one soon after does not make Conn redial in a tight loop. The proxy cuts
// every new connection either while the Conn declares its topology again
// (redeclare) or right after the handshake, on a Conn with no topology to
// declare again, so that the connection is handed out and lost at once
// (handshake). Either way each failed attempt waits the next interval of
// the reconnect backoff (testReconnect: 50ms, growing by half, at most 1s), so only
// a handful of dials happen within seconds. Once the broker behaves again,
// the Conn recovers and publishing works.
func TestReconnectBackoff(t *testing.T) {
	t.Parallel()
	const (
		window = 3 * time.Second
		// With a 50ms start, a 1.5 factor, 50% jitter and a 1s cap, the
		// waits of the first 3s add up to 3s after at most 12 of them:
		// 13 dials. A redial loop without waits makes hundreds.
		maxDials = 20
	)
	for _, tc := range []struct {
		name    string
		declare bool // the Conn declares the topology (else another Conn does)
		trap    []method
	}{
		{"redeclare", true, []method{exchangeDeclare, queueDeclare, queueBind}},
		{"handshake", false, []method{connectionOpenOK}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := testenv.RabbitMQURL(t)
			ctx := ctxT(t)
			px := newProxy(t, url)
			conn := dial(t, px.url)
			declarer := dial(t, url)
			if tc.declare {
				declarer = conn
			}
			ex, q := boundQueue(t, url, declarer, "k")
			// Closed before the cleaner deletes the queue, which conn
			// would otherwise declare again if it were reconnecting then.
			t.Cleanup(func() { conn.Close() })
			pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { pub.Close() })
			msg := func() broker.Message { return keyed(ex) }
			if err := pub.Publish(ctx, msg()); err != nil {
				t.Fatal(err)
			}

			px.trap(false, tc.trap...)
			px.cut()
			waitFor(t, "a reconnect attempt to be cut by the trap", func() bool { return px.tripped.Load() > 0 })
			a0, t0 := px.accepted.Load(), px.tripped.Load()
			time.Sleep(window)
			dials, tripped := px.accepted.Load()-a0, px.tripped.Load()-t0
			t.Logf("%d dials, %d connections cut by the trap in %v", dials, tripped, window)
			if dials > maxDials {
				t.Errorf("%d dials in %v against a broker that drops every connection, want at most %d (no backoff?)", dials, window, maxDials)
			}
			if tripped < 2 {
				t.Errorf("%d connections cut by the trap in %v, want the Conn to keep trying", tripped, window)
			}

			px.untrap()
			start := time.Now()
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := pub.Publish(pctx, msg()); err != nil {
				t.Fatalf("Publish once the broker behaves again: %v", err)
			}
			t.Logf("recovered and published in %v", time.Since(start))
			if n := queueDepth(t, raw(t, url), q); n != 2 {
				t.Errorf("queue holds %d messages, want 2", n)
			}
		})
	}
}
