package brokertest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// roundTrip: ID, key, payload, headers (those in the reserved namespace
// included) and time arrive intact, on the first attempt, with the group
// set.
func (s *suite) roundTrip(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	payload := make([]byte, 256)
	for i := range payload {
		payload[i] = byte(i)
	}
	sent := []broker.Message{{
		ID:      broker.NewID(),
		Topic:   e.topic,
		Key:     "order-42",
		Payload: payload,
		Headers: map[string]string{
			broker.HeaderType:          "order.created",
			broker.HeaderContentType:   "application/octet-stream",
			broker.HeaderCorrelationID: "corr-1",
			broker.HeaderCausationID:   "cause-1",
			broker.HeaderTraceparent:   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"x-Mixed-Case":             "value with spaces and ünïcode",
			"empty":                    "",
			// Message headers in the reserved namespace, named like
			// adapters' wire headers, arrive unchanged (escaped on the
			// wire), and do not change the message's ID or time.
			broker.ReservedHeaderPrefix + "id":      "not the message ID",
			broker.ReservedHeaderPrefix + "time":    "not the time",
			broker.ReservedHeaderPrefix + "u-x":     "looks escaped",
			broker.ReservedHeaderPrefix + "dlq-key": "user value",
		},
		Time: time.Now().Add(-time.Hour).Truncate(e.f.TimePrecision),
	}, {
		ID:    broker.NewID(),
		Topic: e.topic,
		// No key, no payload, no headers.
		Time: time.Now().Truncate(e.f.TimePrecision),
	}, {
		// The ends of the time range every adapter must carry.
		ID: broker.NewID(), Topic: e.topic, Time: broker.MinTime,
	}, {
		ID: broker.NewID(), Topic: e.topic, Time: broker.MaxTime.Truncate(e.f.TimePrecision),
	}}
	e.publish(sent...)

	got := make(chan broker.Delivery, 10)
	e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0]}, func(_ context.Context, d broker.Delivery) error {
		got <- d
		return nil
	})
	byID := map[string]broker.Delivery{}
	for len(byID) < len(sent) {
		select {
		case d := <-got:
			if _, dup := byID[d.ID]; dup && e.f.ExactlyOnce {
				t.Errorf("message %s delivered twice", d.ID)
			}
			byID[d.ID] = d
		case <-time.After(e.f.Timeout):
			t.Fatalf("received %d of %d messages", len(byID), len(sent))
		}
	}
	for _, m := range sent {
		d, ok := byID[m.ID]
		if !ok {
			t.Errorf("message %s not received; IDs received: %v", m.ID, slicesKeys(byID))
			continue
		}
		if d.Topic != m.Topic {
			t.Errorf("topic = %q, want %q", d.Topic, m.Topic)
		}
		if d.Key != m.Key {
			t.Errorf("key = %q, want %q", d.Key, m.Key)
		}
		if !bytes.Equal(d.Payload, m.Payload) {
			t.Errorf("payload = %x, want %x", d.Payload, m.Payload)
		}
		if len(d.Headers) != len(m.Headers) || (len(m.Headers) > 0 && !maps.Equal(d.Headers, m.Headers)) {
			t.Errorf("headers = %v, want %v", d.Headers, m.Headers)
		}
		if diff := d.Time.Sub(m.Time); diff < -e.f.TimePrecision || diff > e.f.TimePrecision {
			t.Errorf("time = %v, want %v (precision %v)", d.Time, m.Time, e.f.TimePrecision)
		}
		if d.Attempt != 1 || d.Redelivered {
			t.Errorf("first delivery has attempt %d, redelivered %v; want 1, false", d.Attempt, d.Redelivered)
		}
		if d.Group != groups[0] {
			t.Errorf("group = %q, want %q", d.Group, groups[0])
		}
	}
}

func slicesKeys(m map[string]broker.Delivery) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// badInput: invalid messages and subscriptions are clear errors, a batch with
// one bad message sends nothing, and a cancelled context is honoured.
func (s *suite) badInput(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), e.f.Timeout)
	defer cancel()
	pub := e.b.Publisher

	if err := pub.Publish(ctx, broker.Message{Payload: []byte("x")}); !errors.Is(err, broker.ErrEmptyTopic) {
		t.Errorf("publish with empty topic: err = %v, want ErrEmptyTopic", err)
	}
	good := broker.NewMessage(e.topic, []byte("must not be sent"))
	limit := e.f.MaxMessageBytes
	if l, ok := pub.(broker.SizeLimiter); ok && limit <= 0 {
		limit = l.MaxMessageBytes()
	}
	if limit <= 0 {
		limit = broker.DefaultMaxMessageBytes
	}
	big := broker.NewMessage(e.topic, make([]byte, limit+1))
	if err := pub.Publish(ctx, good, big); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Errorf("publish of an oversized message: err = %v, want ErrMessageTooLarge", err)
	}
	for _, tm := range []time.Time{time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)} {
		odd := broker.NewMessage(e.topic, []byte("must not be sent"))
		odd.Time = tm
		if err := pub.Publish(ctx, good, odd); !errors.Is(err, broker.ErrInvalidMessage) {
			t.Errorf("publish of a message dated %v: err = %v, want ErrInvalidMessage", tm, err)
		}
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	cancelled := broker.NewMessage(e.topic, []byte("cancelled"))
	if err := pub.Publish(cctx, cancelled); err == nil {
		t.Errorf("publish with a cancelled context returned nil")
	}

	h := func(context.Context, broker.Delivery) error { return nil }
	for _, c := range []struct {
		name string
		sub  broker.Subscription
		h    broker.Handler
		want error
	}{
		{"nil handler", broker.Subscription{Topic: e.topic, Group: groups[0]}, nil, broker.ErrNilHandler},
		{"empty topic", broker.Subscription{Group: groups[0]}, h, broker.ErrEmptyTopic},
		{"empty group", broker.Subscription{Topic: e.topic}, h, broker.ErrEmptyGroup},
		{"negative concurrency", broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: -1}, h, broker.ErrInvalidSubscription},
		{"absurd concurrency", broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: 1 << 40}, h, broker.ErrInvalidSubscription},
	} {
		done := make(chan error, 1)
		go func() { done <- e.b.Subscriber.Subscribe(ctx, c.sub, c.h) }()
		select {
		case err := <-done:
			if !errors.Is(err, c.want) {
				t.Errorf("subscribe with %s: err = %v, want %v", c.name, err, c.want)
			}
		case <-time.After(e.f.Timeout):
			t.Fatalf("subscribe with %s did not return", c.name)
		}
	}

	// Nothing of the rejected calls reached the broker: only the marker
	// arrives. A cancelled Publish may still have reached the broker, so it
	// is tolerated but not required.
	marker := broker.NewMessage(e.topic, []byte("marker"))
	e.publish(marker)
	got := make(chan broker.Delivery, 10)
	sub := e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0]}, func(_ context.Context, d broker.Delivery) error {
		got <- d
		return nil
	})
	deadline := time.After(e.f.Timeout)
	for seenMarker := false; !seenMarker; {
		select {
		case d := <-got:
			switch d.ID {
			case marker.ID:
				seenMarker = true
			case cancelled.ID:
			default:
				t.Errorf("received message %s (%q) from a rejected publish", d.ID, d.Payload)
			}
		case <-deadline:
			t.Fatalf("marker not received")
		}
	}
	settle()
	sub.stop(t, e.f.Timeout)
	for len(got) > 0 {
		if d := <-got; d.ID != marker.ID && d.ID != cancelled.ID {
			t.Errorf("received message %s (%q) from a rejected publish", d.ID, d.Payload)
		}
	}
}

// load: many concurrent publishers, several competing subscribers, nothing
// lost, duplicates counted.
func (s *suite) load(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	const publishers = 50
	n := e.f.LoadMessages
	c := newTally(n)
	h := func(_ context.Context, d broker.Delivery) error {
		c.add(d)
		return nil
	}
	subs := make([]*subscription, 3)
	for i := range subs {
		subs[i] = e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: 8}, h)
	}
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), e.f.Timeout)
			defer cancel()
			var batch []broker.Message
			for i := p; i < n; i += publishers {
				m := broker.NewMessage(e.topic, []byte(strconv.Itoa(i)))
				m.Key = "k" + strconv.Itoa(i%97)
				batch = append(batch, m)
				// Mix single publishes with small batches.
				if len(batch) == 1+p%10 {
					if err := e.b.Publisher.Publish(ctx, batch...); err != nil {
						errs <- err
						return
					}
					batch = batch[:0]
				}
			}
			if len(batch) > 0 {
				if err := e.b.Publisher.Publish(ctx, batch...); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("publish: %v", err)
	}
	c.wait(t, e.f.Timeout, "load")
	settle()
	for i, sub := range subs {
		if !sub.running() {
			t.Errorf("subscriber %d returned early: %v", i, sub.err)
		}
	}
	if got := c.distinct(); got != n {
		t.Errorf("distinct messages = %d, want %d", got, n)
	}
	e.checkDuplicates(c, n, "load")
}

// perKeyOrder: per key, messages are handled in publish order and never two
// at once, while different keys run in parallel.
func (s *suite) perKeyOrder(t *testing.T) {
	if !s.f.PerKeyOrder {
		t.Skip("broker does not promise per-key order")
	}
	e, groups := s.newEnv(t, 1)
	const keys, perKey = 32, 50
	c := newTally(keys * perKey)
	var (
		mu         sync.Mutex
		active     = map[string]bool{}
		maxSeq     = map[string]int{}
		running    int
		maxRunning int
	)
	h := func(_ context.Context, d broker.Delivery) error {
		seq, err := strconv.Atoi(d.Headers["seq"])
		if err != nil {
			t.Errorf("message %s has no seq header: %v", d.ID, d.Headers)
			return nil
		}
		mu.Lock()
		if active[d.Key] {
			t.Errorf("key %s: two handlers at once", d.Key)
		}
		active[d.Key] = true
		running++
		maxRunning = max(maxRunning, running)
		last, ok := maxSeq[d.Key]
		if !ok {
			last = -1
		}
		switch {
		case seq > last+1:
			t.Errorf("key %s: got seq %d after %d, skipping ahead", d.Key, seq, last)
		case seq <= last && e.f.ExactlyOnce:
			t.Errorf("key %s: got seq %d after %d on an exactly-once broker", d.Key, seq, last)
		}
		maxSeq[d.Key] = max(last, seq)
		mu.Unlock()

		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)

		mu.Lock()
		active[d.Key] = false
		running--
		mu.Unlock()
		c.add(d)
		return nil
	}
	for range 2 {
		e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: 8}, h)
	}
	var wg sync.WaitGroup
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("key-%02d", k)
			// Odd keys publish in batches of 5, even keys one at a time; both
			// keep order.
			step := 1 + 4*(k%2)
			for i := 0; i < perKey; i += step {
				var batch []broker.Message
				for j := i; j < min(i+step, perKey); j++ {
					batch = append(batch, SeqMessage(e.topic, key, j))
				}
				e.publish(batch...)
			}
		}()
	}
	wg.Wait()
	c.wait(t, e.f.Timeout, "per-key order")
	settle()
	mu.Lock()
	defer mu.Unlock()
	for k := range keys {
		key := fmt.Sprintf("key-%02d", k)
		if maxSeq[key] != perKey-1 {
			t.Errorf("key %s: highest seq %d, want %d", key, maxSeq[key], perKey-1)
		}
	}
	if maxRunning < 2 {
		t.Errorf("at most %d handler ran at once over %d keys; want parallelism across keys", maxRunning, keys)
	}
	e.checkDuplicates(c, keys*perKey, "per-key order")
}

// redelivery: a handler error brings the message back with a growing
// attempt; a message failing N times is seen N+1 times; later messages of
// its key wait for it.
func (s *suite) redelivery(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	const failures = 3
	poison := SeqMessage(e.topic, "k-fail", 0)
	after := SeqMessage(e.topic, "k-fail", 1)
	others := []broker.Message{SeqMessage(e.topic, "k-a", 0), SeqMessage(e.topic, "k-b", 0), SeqMessage(e.topic, "k-c", 0)}
	e.publish(poison, after)
	e.publish(others...)

	c := newTally(5)
	var (
		mu            sync.Mutex
		attempts      []int
		redelivered   []bool
		poisonHandled bool
	)
	e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		switch d.ID {
		case poison.ID:
			attempts = append(attempts, d.Attempt)
			redelivered = append(redelivered, d.Redelivered)
			if len(attempts) <= failures {
				return fmt.Errorf("injected failure %d", len(attempts))
			}
			poisonHandled = true
		case after.ID:
			if e.f.PerKeyOrder && !poisonHandled {
				t.Errorf("message after the failing one in key k-fail handled before it succeeded")
			}
		}
		c.add(d)
		return nil
	})
	c.wait(t, e.f.Timeout, "redelivery")
	settle()
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != failures+1 {
		t.Errorf("failing message handled %d times, want %d (attempts %v)", len(attempts), failures+1, attempts)
	}
	for i, a := range attempts {
		if a != i+1 {
			t.Errorf("delivery %d of the failing message has attempt %d, want %d (all: %v)", i+1, a, i+1, attempts)
		}
		if want := i > 0; redelivered[i] != want {
			t.Errorf("delivery %d of the failing message has redelivered=%v, want %v", i+1, redelivered[i], want)
		}
	}
	for _, m := range append(others, after) {
		if n := c.count(m.ID); n != 1 && (e.f.ExactlyOnce || n == 0) {
			t.Errorf("message %s handled %d times, want 1", m.Payload, n)
		}
	}
}

// subscriberRestart: a subscriber stopped mid-stream and started again
// misses nothing, including what was published while none ran.
func (s *suite) subscriberRestart(t *testing.T) {
	if !s.f.Persistent {
		t.Skip("broker is not persistent")
	}
	e, groups := s.newEnv(t, 1)
	const first, second = 300, 300
	c := newTally(first + second)
	var handled atomic.Int64
	halfway := make(chan struct{})
	h := func(_ context.Context, d broker.Delivery) error {
		time.Sleep(200 * time.Microsecond)
		c.add(d)
		if handled.Add(1) == first/3 {
			close(halfway)
		}
		return nil
	}
	sub := broker.Subscription{Topic: e.topic, Group: groups[0], Concurrency: 4}
	publishN := func(n int, tag string) {
		var batch []broker.Message
		for i := range n {
			batch = append(batch, SeqMessage(e.topic, fmt.Sprintf("%s-%d", tag, i%10), i))
			if len(batch) == 50 {
				e.publish(batch...)
				batch = nil
			}
		}
		if len(batch) > 0 {
			e.publish(batch...)
		}
	}
	publishN(first, "a")
	s1 := e.subscribe(sub, h)
	select {
	case <-halfway:
	case <-time.After(e.f.Timeout):
		t.Fatalf("first subscriber handled %d messages", handled.Load())
	}
	s1.stop(t, e.f.Timeout)
	stoppedAt := c.distinct()
	publishN(second, "b")
	e.subscribe(sub, h)
	c.wait(t, e.f.Timeout, "subscriber restart")
	settle()
	t.Logf("first subscriber handled %d distinct messages before stopping", stoppedAt)
	e.checkDuplicates(c, first+second, "subscriber restart")
}

// consumerGroups: each group receives everything; members of one group
// share the messages.
func (s *suite) consumerGroups(t *testing.T) {
	if !s.f.ConsumerGroups {
		t.Skip("broker has no consumer groups")
	}
	e, groups := s.newEnv(t, 2)
	const n = 200
	tallies := []*tally{newTally(n), newTally(n)}
	for gi, g := range groups {
		for range 2 {
			e.subscribe(broker.Subscription{Topic: e.topic, Group: g, Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
				if d.Group != g {
					t.Errorf("delivery for group %s has Group %q", g, d.Group)
				}
				tallies[gi].add(d)
				return nil
			})
		}
	}
	var batch []broker.Message
	for i := range n {
		batch = append(batch, SeqMessage(e.topic, fmt.Sprintf("k%d", i%20), i))
	}
	e.publish(batch[:n/2]...)
	e.publish(batch[n/2:]...)
	for gi, c := range tallies {
		c.wait(t, e.f.Timeout, fmt.Sprintf("group %d", gi))
	}
	settle()
	for gi, c := range tallies {
		e.checkDuplicates(c, n, fmt.Sprintf("group %d", gi))
	}
}

// topicIsolation: a subscriber sees only its own topic.
func (s *suite) topicIsolation(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	other := UniqueName(t, "t")
	e.setup(other, groups...)
	const n = 50
	var mine, theirs []broker.Message
	for i := range n {
		mine = append(mine, SeqMessage(e.topic, "k", i))
		theirs = append(theirs, SeqMessage(other, "k", i))
	}
	e.publish(theirs...)
	e.publish(mine...)
	c := newTally(n)
	e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0]}, func(_ context.Context, d broker.Delivery) error {
		if d.Topic != e.topic {
			t.Errorf("subscriber of %s received a message of topic %s", e.topic, d.Topic)
		}
		c.add(d)
		return nil
	})
	c.wait(t, e.f.Timeout, "topic isolation")
	settle()
	for _, m := range theirs {
		if c.count(m.ID) != 0 {
			t.Errorf("message %s of topic %s delivered to subscriber of %s", m.ID, other, e.topic)
		}
	}
	e.checkDuplicates(c, n, "topic isolation")
}

// shutdown: cancelling returns promptly; a handler in flight completes with
// a live context and its ack is kept.
func (s *suite) shutdown(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	sub := broker.Subscription{Topic: e.topic, Group: groups[0]}

	// An idle subscription stops promptly.
	idle := e.subscribe(sub, func(context.Context, broker.Delivery) error { return nil })
	time.Sleep(200 * time.Millisecond)
	idle.stop(t, 10*time.Second)

	inflight := broker.NewMessage(e.topic, []byte("in flight"))
	e.publish(inflight)
	started := make(chan struct{})
	release := make(chan struct{})
	var handlerCtxErr atomic.Value
	s1 := e.subscribe(sub, func(ctx context.Context, d broker.Delivery) error {
		if d.ID != inflight.ID {
			return nil
		}
		close(started)
		<-release
		time.Sleep(50 * time.Millisecond)
		handlerCtxErr.Store(fmt.Sprint(ctx.Err()))
		return nil
	})
	select {
	case <-started:
	case <-time.After(e.f.Timeout):
		t.Fatalf("in-flight message never delivered")
	}
	s1.cancel()
	time.Sleep(100 * time.Millisecond)
	select {
	case <-s1.done:
		t.Fatalf("Subscribe returned while its handler was still running")
	default:
	}
	close(release)
	s1.stop(t, 10*time.Second)
	if got := handlerCtxErr.Load(); got != "<nil>" {
		t.Errorf("handler context at drain: %v, want not cancelled", got)
	}

	// The next member of the group gets the next message and not the one
	// acknowledged during shutdown.
	next := broker.NewMessage(e.topic, []byte("next"))
	e.publish(next)
	c := newTally(1)
	var redelivered atomic.Int64
	e.subscribe(sub, func(_ context.Context, d broker.Delivery) error {
		if d.ID == inflight.ID {
			redelivered.Add(1)
			return nil
		}
		c.add(d)
		return nil
	})
	c.wait(t, e.f.Timeout, "after shutdown")
	settle()
	if n := redelivered.Load(); n != 0 {
		t.Errorf("message acknowledged during shutdown was redelivered %d times", n)
	}
}

// brokerRestart: the broker restarts mid-stream; every message whose
// Publish returned nil is delivered, and the subscription survives.
func (s *suite) brokerRestart(t *testing.T) {
	if !s.f.Restartable {
		t.Skip("the broker lives in the process: nothing to restart (Features.Restartable false)")
	}
	e := &env{t: t, f: s.f, b: s.factory(t), topic: UniqueName(t, "t")}
	if e.b.Restart == nil {
		t.Fatal("Features.Restartable is set but the factory gave the BrokerRestart case no Backend.Restart")
	}
	group := UniqueName(t, "g")
	e.setup(e.topic, group)
	const n = 2000
	c := newTally(n)
	var handled atomic.Int64
	sub := e.subscribe(broker.Subscription{Topic: e.topic, Group: group, Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
		c.add(d)
		handled.Add(1)
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 4*e.f.Timeout)
	defer cancel()
	pubDone := make(chan error, 1)
	var publishErrors atomic.Int64
	go func() {
		for i := 0; i < n; i += 10 {
			var batch []broker.Message
			for j := i; j < i+10; j++ {
				batch = append(batch, SeqMessage(e.topic, fmt.Sprintf("k%d", j%16), j))
			}
			// Retry what was not accepted until it is; a message is only
			// counted as sent once Publish returned nil for it.
			for len(batch) > 0 {
				err := e.b.Publisher.Publish(ctx, batch...)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					pubDone <- fmt.Errorf("publish did not recover: %w", err)
					return
				}
				publishErrors.Add(1)
				var pe *broker.PublishError
				if errors.As(err, &pe) {
					batch = pe.Failed(batch)
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(time.Millisecond)
		}
		pubDone <- nil
	}()

	for handled.Load() < n/4 {
		if ctx.Err() != nil {
			t.Fatalf("only %d messages handled before restart", handled.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("restarting broker after %d messages", handled.Load())
	if err := e.b.Restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	c.wait(t, 4*e.f.Timeout, "broker restart")
	settle()
	if !sub.running() {
		t.Errorf("subscription ended during broker restart: %v", sub.err)
	}
	t.Logf("publish calls that failed during the restart and were retried: %d", publishErrors.Load())
	// A restart may redeliver what was in flight, even on brokers that are
	// otherwise exactly-once, so duplicates are reported, not failed.
	d := c.duplicates()
	t.Logf("broker restart: %d duplicates over %d messages", d, n)
}
