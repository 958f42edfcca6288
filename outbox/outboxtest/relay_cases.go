package outboxtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/outbox"
)

// RunRelay runs the relay cases: relays built with outbox.NewRelay on
// stores from factory, publishing to brokers from brokers. Cases run in
// parallel, each on its own outbox, topic and consumer group.
func RunRelay(t *testing.T, factory Factory, brokers BrokerFactory, opts Options) {
	s := &relaySuite{factory: factory, brokers: brokers, o: opts.withDefaults()}
	for _, c := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Drain", s.drain},
		{"Poison", func(t *testing.T) { s.poison(t, false) }},
		{"PoisonBlocksKey", func(t *testing.T) { s.poison(t, true) }},
		{"Outage", s.outage},
		{"BadRows", s.badRows},
		{"ProtocolLimits", s.protocolLimits},
		{"WakeUp", s.wakeUp},
		{"Transactions", s.transactions},
		{"Crash", s.crash},
		{"Shutdown", s.shutdown},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t)
		})
	}
}

type relaySuite struct {
	factory Factory
	brokers BrokerFactory
	o       Options
}

type relayEnv struct {
	t            *testing.T
	o            Options
	h            Harness
	b            Broker
	ctx          context.Context
	topic, group string
}

func (s *relaySuite) newEnv(t *testing.T) *relayEnv {
	t.Helper()
	h := s.factory(t)
	if h.Store == nil || h.Enqueue == nil {
		t.Fatal("outboxtest: the factory must set Harness.Store and Harness.Enqueue")
	}
	e := &relayEnv{t: t, o: s.o, h: h, b: s.brokers(t), ctx: ctxT(t, 10*s.o.Timeout),
		topic: brokertest.UniqueName(t, "t"), group: brokertest.UniqueName(t, "g")}
	if e.b.Setup != nil {
		ctx, cancel := context.WithTimeout(e.ctx, s.o.Timeout)
		defer cancel()
		if err := e.b.Setup(ctx, e.topic, e.group); err != nil {
			t.Fatalf("broker setup of %s/%s: %v", e.topic, e.group, err)
		}
	}
	return e
}

// store returns a store handle for one relay: a new one when the harness
// can open them, like a separate relay process would.
func (e *relayEnv) store() outbox.Store {
	if e.h.Open != nil {
		return e.h.Open(e.t)
	}
	return e.h.Store
}

// consume subscribes h to the case's topic until the test ends.
func (e *relayEnv) consume(h broker.Handler) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- e.b.Subscriber.Subscribe(ctx, broker.Subscription{Topic: e.topic, Group: e.group, Concurrency: 16}, h)
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				e.t.Errorf("subscribe: %v", err)
			}
		case <-time.After(e.o.Timeout):
			e.t.Errorf("Subscribe did not return within %v of cancellation", e.o.Timeout)
		}
	})
}

// relay is a running relay.
type relay struct {
	*outbox.Relay
	cancel context.CancelFunc
	done   chan error
}

// stop cancels the relay and waits for Run to return.
func (r *relay) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("relay Run returned %v", err)
		}
		r.done <- nil // later stops return at once
	case <-time.After(timeout):
		t.Errorf("relay did not stop within %v", timeout)
	}
}

// startRelay runs a relay on store until stopped or the test ends. Zero
// fields of cfg get test defaults: the suite's batch size and logger, a
// 100ms poll.
func (e *relayEnv) startRelay(store outbox.Store, pub broker.Publisher, cfg outbox.Config) *relay {
	e.t.Helper()
	return e.startRelayCtx(context.Background(), store, pub, cfg)
}

// startRelayCtx is startRelay with a parent context: cancelling it stops
// the relay too.
func (e *relayEnv) startRelayCtx(parent context.Context, store outbox.Store, pub broker.Publisher, cfg outbox.Config) *relay {
	e.t.Helper()
	if cfg.BatchSize == 0 {
		cfg.BatchSize = e.o.BatchSize
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = e.o.Logger
	}
	r, err := outbox.NewRelay(store, pub, cfg)
	if err != nil {
		e.t.Fatalf("new relay: %v", err)
	}
	ctx, cancel := context.WithCancel(parent)
	rr := &relay{Relay: r, cancel: cancel, done: make(chan error, 1)}
	go func() { rr.done <- r.Run(ctx) }()
	e.t.Cleanup(func() { rr.stop(e.t, e.o.Timeout) })
	return rr
}

// diagnose returns the harness's description of the outbox's state,
// prefixed for a failure message, or "" without Harness.Diagnose.
func (e *relayEnv) diagnose() string {
	if e.h.Diagnose == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return "\nstate of the outbox:\n" + e.h.Diagnose(ctx)
}

func (e *relayEnv) enqueue(msgs ...broker.Message) {
	e.t.Helper()
	if err := e.h.Enqueue(e.ctx, msgs...); err != nil {
		e.t.Fatalf("enqueue %d messages: %v", len(msgs), err)
	}
}

// write enqueues perKey[k] messages for each key with writers concurrent
// writers, each owning a share of the keys and enqueueing them in seq order
// in transactions of 1 to 8 messages.
func (e *relayEnv) write(writers int, perKey map[string]int) error {
	keys := make([]string, 0, len(perKey))
	for k := range perKey {
		keys = append(keys, k)
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			next := map[string]int{}
			var mine []string
			for i := w; i < len(keys); i += writers {
				mine = append(mine, keys[i])
			}
			for len(mine) > 0 {
				var msgs []broker.Message
				for n := 1 + rng.IntN(8); n > 0 && len(mine) > 0; n-- {
					i := rng.IntN(len(mine))
					k := mine[i]
					msgs = append(msgs, SeqMessage(e.topic, k, next[k]))
					if next[k]++; next[k] == perKey[k] {
						mine = append(mine[:i], mine[i+1:]...)
					}
				}
				if err := e.h.Enqueue(e.ctx, msgs...); err != nil {
					errs <- fmt.Errorf("writer %d: enqueue: %w", w, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (e *relayEnv) mustWrite(writers int, perKey map[string]int) {
	e.t.Helper()
	if err := e.write(writers, perKey); err != nil {
		e.t.Fatal(err)
	}
}

func spread(prefix string, keys, total int) map[string]int {
	m := make(map[string]int, keys)
	for i := range keys {
		m[prefix+strconv.Itoa(i)] = total / keys
	}
	for i := range total % keys {
		m[prefix+strconv.Itoa(i)]++
	}
	return m
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func (e *relayEnv) waitEmpty(store outbox.Store) {
	e.t.Helper()
	Eventually(e.t, e.o.Timeout, "no pending rows", func() (bool, string) {
		st, err := store.Stats(e.ctx)
		return err == nil && st.Pending == 0, fmt.Sprint(st, err)
	})
}

// drain: concurrent writers enqueue Messages over Keys while Relays relays
// drain the outbox: every message is delivered exactly once and each key's
// messages arrive in order.
func (s *relaySuite) drain(t *testing.T) {
	e := s.newEnv(t)
	perKey := spread("k", e.o.Keys, e.o.Messages)
	tally := NewTally(e.o.Messages)
	e.consume(tally.Handler())
	for range e.o.Relays {
		e.startRelay(e.store(), e.b.Publisher, outbox.Config{})
	}
	start := time.Now()
	e.mustWrite(e.o.Writers, perKey)
	tally.Wait(t, e.o.Timeout, "drain")
	t.Logf("%d messages over %d keys, %d writers, %d relays: delivered in %v",
		e.o.Messages, e.o.Keys, e.o.Writers, e.o.Relays, time.Since(start).Round(time.Millisecond))
	time.Sleep(300 * time.Millisecond) // let late duplicates show
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, perKey)
	e.waitEmpty(e.h.Store)
}

// shutdown: Run cancelled while its batch is being published lets the batch
// finish: the Publish call keeps a live context, Run does not return before
// it ends, the rows are marked published, and Run returns nil. Nothing is
// left pending to be published again.
func (s *relaySuite) shutdown(t *testing.T) {
	e := s.newEnv(t)
	const n = 20
	entered, release := make(chan struct{}), make(chan struct{})
	var (
		once      sync.Once
		ctxErr    error
		batchSize int
	)
	pub := &FaultyPublisher{Next: e.b.Publisher, Before: func(ctx context.Context, msgs []broker.Message) error {
		once.Do(func() {
			batchSize = len(msgs)
			close(entered)
			<-release
			ctxErr = ctx.Err()
		})
		return nil
	}}
	tally := NewTally(n)
	e.consume(tally.Handler())
	e.mustWrite(1, map[string]int{"k": n})
	r := e.startRelay(e.store(), pub, outbox.Config{BatchSize: n})
	select {
	case <-entered:
	case <-time.After(e.o.Timeout):
		t.Fatal("the relay never published")
	}
	r.cancel()
	select {
	case err := <-r.done:
		t.Fatalf("Run returned %v while its batch was still being published", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Run returned %v after cancellation, want nil", err)
		}
		r.done <- nil // the cleanup's stop returns at once
	case <-time.After(e.o.Timeout):
		t.Fatal("Run did not return after its batch finished")
	}
	if ctxErr != nil {
		t.Errorf("the in-flight Publish saw its context end (%v); it must outlive Run's", ctxErr)
	}
	st, err := e.h.Store.Stats(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(n - batchSize); st.Pending != want || st.Dead != 0 {
		t.Fatalf("after shutdown stats = %+v; want %d pending (the %d rows of the finished batch published), none parked", st, want, batchSize)
	}
	if batchSize < n {
		e.startRelay(e.store(), e.b.Publisher, outbox.Config{})
	}
	tally.Wait(t, e.o.Timeout, "delivery of every row")
	time.Sleep(300 * time.Millisecond) // let late duplicates show
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, map[string]int{"k": n})
}

// poison: a message the broker refuses is retried, then parked after exactly
// MaxAttempts with the broker's reason; other keys flow all along; the rest
// of its key waits while it is retried and, once it is parked, flows on
// (blockKey false) or waits until it is redriven (blockKey true); redrive
// publishes it.
func (s *relaySuite) poison(t *testing.T, blockKey bool) {
	e := s.newEnv(t)
	const maxAttempts = 3
	poison := SeqMessage(e.topic, "p", 0)
	var (
		refusing   atomic.Bool
		offers     atomic.Int32
		violations atomic.Int32
	)
	refusing.Store(true)
	pub := &FaultyPublisher{Next: e.b.Publisher, Reject: func(m broker.Message) error {
		switch {
		case m.ID == poison.ID && refusing.Load():
			offers.Add(1)
			return errors.New("broker refuses the poison message")
		case m.Key == "p" && m.ID != poison.ID && refusing.Load() && (blockKey || offers.Load() < maxAttempts):
			// The broker refuses what follows a refused message of the same
			// key in one call (see FaultyPublisher), so getting here means
			// the relay sent p/1 on its own while p/0 was not published.
			violations.Add(1)
		}
		return nil
	}}
	perKey := spread("k", 10, 200)
	others := sum(perKey)
	want := others
	if !blockKey {
		want += 2 // p/1 and p/2 flow once p/0 is parked
	}
	tally := NewTally(want)
	e.consume(tally.Handler())
	r := e.startRelay(e.store(), pub, outbox.Config{
		MaxAttempts:    maxAttempts,
		Backoff:        broker.ConstantBackoff(20 * time.Millisecond),
		BlockKeyOnPark: blockKey,
	})
	e.enqueue(poison, SeqMessage(e.topic, "p", 1), SeqMessage(e.topic, "p", 2))
	e.mustWrite(e.o.Writers, perKey)
	tally.Wait(t, e.o.Timeout, "everything but the poison message")

	var parked []outbox.Record
	Eventually(t, e.o.Timeout, "poison message parked", func() (bool, string) {
		var err error
		parked, err = e.h.Store.Parked(e.ctx, outbox.ParkedQuery{})
		return err == nil && len(parked) == 1, fmt.Sprint(payloads(parked), err)
	})
	p := parked[0]
	if p.Message.ID != poison.ID || p.Attempts != maxAttempts ||
		!strings.Contains(p.LastError, "broker refuses the poison message") ||
		!strings.Contains(p.LastError, "gave up after 3 attempts") {
		t.Errorf("parked row: %s attempts %d reason %q; want the poison message, %d attempts, the broker's reason",
			p.Message.Payload, p.Attempts, p.LastError, maxAttempts)
	}
	if n := offers.Load(); n != maxAttempts {
		t.Errorf("the poison message was offered to the broker %d times, want exactly %d", n, maxAttempts)
	}
	if n := violations.Load(); n != 0 {
		t.Errorf("a later message of the poison message's key was sent %d times while it was unpublished", n)
	}
	if blockKey {
		time.Sleep(300 * time.Millisecond)
		if tally.Distinct() != others {
			t.Errorf("with BlockKeyOnPark, %d messages arrived, want %d (p/1 and p/2 must wait)", tally.Distinct(), others)
		}
	}

	// Redrive with the broker fixed: the message is published.
	refusing.Store(false)
	if n, err := e.h.Store.Redrive(e.ctx, p.ID); err != nil || n != 1 {
		t.Fatalf("redrive = %d, %v", n, err)
	}
	r.Wake()
	Eventually(t, e.o.Timeout, "redriven message delivered", func() (bool, string) {
		return tally.Count(poison.ID) >= 1 && tally.Distinct() == others+3, fmt.Sprint(tally.Distinct())
	})
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, perKey)
	tally.mu.Lock()
	gotP := fmt.Sprint(tally.first["p"])
	tally.mu.Unlock()
	wantP := "[1 2 0]"
	if blockKey {
		wantP = "[0 1 2]"
	}
	if gotP != wantP {
		t.Errorf("key p arrived in order %s, want %s", gotP, wantP)
	}
	if parked, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{}); err != nil || len(parked) != 0 {
		t.Errorf("after redrive, parked = %v, %v", payloads(parked), err)
	}
}

// outage: while the broker is unreachable nothing is charged, so an outage
// lasting many more retries than MaxAttempts parks nothing; when the broker
// returns the backlog drains, exactly once and in order. The outage shows
// both as a network error and as an adapter error wrapping
// broker.ErrUnavailable.
func (s *relaySuite) outage(t *testing.T) {
	e := s.newEnv(t)
	var (
		down  atomic.Bool
		calls atomic.Int32
	)
	down.Store(true)
	pub := &FaultyPublisher{Next: e.b.Publisher, Before: func(context.Context, []broker.Message) error {
		if !down.Load() {
			return nil
		}
		if calls.Add(1) <= 2 {
			return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		}
		return fmt.Errorf("outboxtest: connection lost: %w", broker.ErrUnavailable)
	}}
	perKey := spread("k", 10, 300)
	tally := NewTally(sum(perKey))
	e.consume(tally.Handler())
	e.startRelay(e.store(), pub, outbox.Config{
		MaxAttempts: 2,
		Backoff:     broker.ConstantBackoff(10 * time.Millisecond),
	})
	e.mustWrite(2, perKey)
	Eventually(t, e.o.Timeout, "relay retrying against the down broker", func() (bool, string) {
		return pub.Calls() >= 7, fmt.Sprint(pub.Calls(), " calls")
	})
	st, err := e.h.Store.Stats(e.ctx)
	if err != nil || st.Dead != 0 || st.Pending != int64(sum(perKey)) {
		t.Fatalf("during the outage stats = %+v, %v; want everything pending, nothing parked", st, err)
	}
	if n := tally.Distinct(); n != 0 {
		t.Errorf("%d messages delivered through a down broker", n)
	}
	down.Store(false)
	tally.Wait(t, e.o.Timeout, "drain after the outage")
	time.Sleep(300 * time.Millisecond)
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, perKey)
	if parked, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{}); err != nil || len(parked) != 0 {
		t.Errorf("outage parked rows: %v, %v", payloads(parked), err)
	}
}

// badRows: rows that can never be published (over the size limit, empty
// topic, undecodable) are parked at once with a clear reason and never
// offered to the broker; their keys flow on.
func (s *relaySuite) badRows(t *testing.T) {
	e := s.newEnv(t)
	big := SeqMessage(e.topic, "b", 1)
	big.Payload = make([]byte, 2000)
	var offeredBad atomic.Int32
	// The relay checks rows against its publisher's limit (1000 bytes here).
	pub := &FaultyPublisher{Next: e.b.Publisher, MaxBytes: 1000, Reject: func(m broker.Message) error {
		if m.ID == big.ID || m.Topic == "" {
			offeredBad.Add(1)
		}
		return nil
	}}
	wantParked := map[string]string{"b": "message too large"}
	perKey := map[string]int{"c": 5}
	e.enqueue(SeqMessage(e.topic, "b", 0), big, SeqMessage(e.topic, "b", 2))
	e.enqueue(SeqMessage(e.topic, "c", 0), SeqMessage(e.topic, "c", 1), SeqMessage(e.topic, "c", 2),
		SeqMessage(e.topic, "c", 3), SeqMessage(e.topic, "c", 4))
	want := 2 + 5
	if e.h.Corrupt != nil {
		for _, c := range []struct {
			kind   Corruption
			key    string
			reason string
		}{{EmptyTopic, "e", "empty topic"}, {BadHeaders, "h", "malformed"}} {
			e.enqueue(SeqMessage(e.topic, c.key, 0))
			if err := e.h.Corrupt(e.ctx, c.kind, c.key); err != nil {
				t.Fatalf("corrupt: %v", err)
			}
			e.enqueue(SeqMessage(e.topic, c.key, 2))
			wantParked[c.key] = c.reason
			want += 2
		}
	}
	tally := NewTally(want)
	e.consume(tally.Handler())
	e.startRelay(e.store(), pub, outbox.Config{})
	tally.Wait(t, e.o.Timeout, "good rows")
	var parked []outbox.Record
	Eventually(t, e.o.Timeout, "bad rows parked", func() (bool, string) {
		var err error
		parked, err = e.h.Store.Parked(e.ctx, outbox.ParkedQuery{})
		return err == nil && len(parked) == len(wantParked), fmt.Sprint(len(parked), err)
	})
	for _, p := range parked {
		reason, ok := wantParked[p.Message.Key]
		if !ok || !strings.Contains(p.LastError, reason) || p.Attempts != 1 {
			t.Errorf("parked row of key %q: attempts %d, reason %q; want 1 attempt and a reason containing %q",
				p.Message.Key, p.Attempts, p.LastError, reason)
		}
	}
	if n := offeredBad.Load(); n != 0 {
		t.Errorf("bad rows were offered to the broker %d times", n)
	}
	tally.mu.Lock()
	for k := range wantParked {
		if got := fmt.Sprint(tally.first[k]); got != "[0 2]" {
			t.Errorf("key %s arrived as %s, want [0 2] (the bad row 1 parked, the key flowing on)", k, got)
		}
	}
	tally.mu.Unlock()
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, perKey)
}

// wakeUp: a store's notifications wake the relay with polling practically
// off; without them, polling finds the rows.
func (s *relaySuite) wakeUp(t *testing.T) {
	t.Run("Notify", func(t *testing.T) {
		e := s.newEnv(t)
		store := e.store()
		if _, ok := store.(outbox.Notifier); !ok {
			t.Skip("the store does not implement outbox.Notifier")
		}
		tally := NewTally(20)
		e.consume(tally.Handler())
		e.startRelay(store, e.b.Publisher, outbox.Config{PollInterval: time.Hour})
		// Give the relay's first poll time to pass, so only a notification
		// can wake it for the messages.
		time.Sleep(200 * time.Millisecond)
		for i := range 20 {
			e.enqueue(SeqMessage(e.topic, "k", i))
		}
		tally.Wait(t, e.o.Timeout, "messages delivered by notification")
		tally.CheckOrder(t, map[string]int{"k": 20})
	})
	t.Run("PollOnly", func(t *testing.T) {
		e := s.newEnv(t)
		tally := NewTally(20)
		e.consume(tally.Handler())
		e.startRelay(e.store(), e.b.Publisher, outbox.Config{DisableNotify: true, PollInterval: 20 * time.Millisecond})
		for i := range 20 {
			e.enqueue(SeqMessage(e.topic, "k", i))
		}
		tally.Wait(t, e.o.Timeout, "messages delivered by polling")
		tally.CheckOrder(t, map[string]int{"k": 20})
	})
}

// transactions: end to end through the relay, a rolled-back transaction
// publishes nothing, and a transaction that wrote first but commits after
// others is still published, after the rows of its key that committed
// before it (commit order), without holding up other keys.
func (s *relaySuite) transactions(t *testing.T) {
	e := s.newEnv(t)
	if e.h.Begin == nil {
		t.Skip("Harness.Begin not set")
	}
	tally := NewTally(1 << 30)
	e.consume(tally.Handler())
	e.startRelay(e.store(), e.b.Publisher, outbox.Config{})

	rolledBack, err := e.h.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	gone := SeqMessage(e.topic, "r", 0)
	if err := rolledBack.Enqueue(e.ctx, gone); err != nil {
		t.Fatal(err)
	}
	if err := rolledBack.Rollback(e.ctx); err != nil {
		t.Fatal(err)
	}

	late, err := e.h.Begin(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = late.Rollback(context.Background()) })
	lateMsg := SeqMessage(e.topic, "k", 2) // written first, committed last
	if err := late.Enqueue(e.ctx, lateMsg); err != nil {
		t.Fatal(err)
	}
	e.enqueue(SeqMessage(e.topic, "k", 0), SeqMessage(e.topic, "k", 1), SeqMessage(e.topic, "other", 0))
	Eventually(t, e.o.Timeout, "rows committed before the late transaction delivered", func() (bool, string) {
		return tally.Distinct() == 3, fmt.Sprint(tally.Distinct())
	})
	if err := late.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.enqueue(SeqMessage(e.topic, "k", 3))
	Eventually(t, e.o.Timeout, "the late row delivered", func() (bool, string) {
		return tally.Distinct() == 5, fmt.Sprint(tally.Distinct())
	})
	time.Sleep(300 * time.Millisecond)
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, map[string]int{"k": 4, "other": 1})
	if n := tally.Count(gone.ID); n != 0 {
		t.Errorf("the rolled-back message was delivered %d times", n)
	}
}

type killPoint int

const (
	killAfterPublish killPoint = iota // the broker accepted the batch; the relay dies before its store update commits
	killMidBatch                      // the relay dies halfway through publishing a batch
	killConnection                    // the relay's database sessions drop before it publishes; the relay lives on
)

func (k killPoint) String() string {
	return [...]string{"after publish, before commit", "mid-batch", "connection dropped"}[k]
}

// crash: relays are killed at injected points, round after round, while
// a writer keeps enqueueing; each is replaced. Nothing is lost, duplicates
// never exceed the rows in flight at the kills, and every key's first
// deliveries stay in order. With Options.Effects (an idempotent consumer)
// every effect is applied exactly once.
func (s *relaySuite) crash(t *testing.T) {
	e := s.newEnv(t)
	if e.h.Crash == nil {
		t.Skip("Harness.Crash not set")
	}
	const batch = 50
	backlog := spread("k", 30, 3000)
	live := spread("w", 10, 300)
	perKey := map[string]int{}
	for k, n := range backlog {
		perKey[k] = n
	}
	for k, n := range live {
		perKey[k] = n
	}
	total := sum(perKey)
	tally := NewTally(total) // every delivery, duplicates included
	h := tally.Handler()
	var applied func(ctx context.Context) (map[string]int, error)
	if e.o.Effects != nil {
		var effect broker.Handler
		effect, applied = e.o.Effects(t)
		h = func(ctx context.Context, d broker.Delivery) error {
			if err := effect(ctx, d); err != nil {
				return err
			}
			tally.Add(d.Message)
			return nil
		}
	}
	e.consume(h)
	e.mustWrite(e.o.Writers, backlog)
	writerDone := make(chan error, 1)
	go func() { writerDone <- e.write(1, live) }()

	var inFlight atomic.Int64
	for round := range e.o.CrashRounds {
		for _, kp := range []killPoint{killAfterPublish, killMidBatch, killConnection} {
			store := e.store()
			var (
				calls  atomic.Int32
				fired  atomic.Bool
				dead   atomic.Bool
				killed = make(chan struct{})
				// For killConnection: set during the call that crashed,
				// and closed once a later call succeeded.
				crashing  atomic.Bool
				recovered = make(chan struct{})
				once      sync.Once
			)
			killCtx, kill := context.WithCancel(context.Background())
			crash := func(n int) {
				inFlight.Add(int64(n))
				if err := e.h.Crash(e.ctx, store); err != nil {
					t.Errorf("crash: %v", err)
				}
			}
			pub := &FaultyPublisher{Next: e.b.Publisher}
			pub.Before = func(ctx context.Context, msgs []broker.Message) error {
				if dead.Load() {
					return errFault
				}
				if calls.Add(1) < 2 {
					return nil
				}
				if fired.Load() {
					select {
					case <-recovered:
						// The relay has proved it recovers: it must not
						// drain the backlog the next victims need before
						// it is stopped. An outage holds the rows with no
						// attempt charged.
						return fmt.Errorf("%w: outboxtest: the victim has recovered", broker.ErrUnavailable)
					default:
						return nil
					}
				}
				switch kp {
				case killMidBatch:
					fired.Store(true)
					half := msgs[:len(msgs)/2]
					if len(half) > 0 {
						if err := pub.Next.Publish(ctx, half...); err != nil {
							t.Errorf("publish half a batch: %v", err)
						}
					}
					dead.Store(true)
					crash(len(msgs))
					kill()
					close(killed)
					return errFault
				case killConnection:
					fired.Store(true)
					crashing.Store(true)
					crash(len(msgs))
					close(killed)
				}
				return nil
			}
			pub.After = func(ctx context.Context, msgs []broker.Message) error {
				if kp == killConnection && fired.Load() && !crashing.Swap(false) {
					once.Do(func() { close(recovered) })
				}
				if kp != killAfterPublish || calls.Load() < 2 || !fired.CompareAndSwap(false, true) {
					return nil
				}
				dead.Store(true)
				crash(len(msgs))
				kill()
				close(killed)
				return errFault
			}
			victim := e.startRelayCtx(killCtx, store, pub, outbox.Config{BatchSize: batch})
			select {
			case <-killed:
			case <-time.After(e.o.Timeout):
				t.Fatalf("round %d, %v: the relay made no second publish call within %v (%d calls)%s",
					round, kp, e.o.Timeout, pub.Calls(), e.diagnose())
			}
			if kp == killConnection {
				// The relay lives on: it must recover and publish again.
				Eventually(t, e.o.Timeout, "relay recovering from a dropped connection", func() (bool, string) {
					select {
					case <-recovered:
						return true, ""
					default:
						return tally.Distinct() == total, fmt.Sprintf("%d publish calls, %d messages sent", pub.Calls(), pub.Sent())
					}
				})
			}
			victim.stop(t, e.o.Timeout)
			kill()
		}
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	for range 2 {
		e.startRelay(e.store(), e.b.Publisher, outbox.Config{BatchSize: batch})
	}
	tally.Wait(t, e.o.Timeout, "drain after the crashes")
	time.Sleep(500 * time.Millisecond)
	dups, bound := tally.Duplicates(), inFlight.Load()
	t.Logf("%d kills over %d rounds: %d duplicate deliveries of %d messages; rows in flight at the kills: %d",
		3*e.o.CrashRounds, e.o.CrashRounds, dups, total, bound)
	if int64(dups) > bound {
		t.Errorf("%d duplicates exceed the %d rows in flight at the kills", dups, bound)
	}
	tally.CheckOrder(t, perKey)
	if applied != nil {
		counts, err := applied(e.ctx)
		if err != nil {
			t.Fatalf("reading the applied effects: %v", err)
		}
		bad := 0
		for id, n := range counts {
			if n != 1 {
				if bad++; bad <= 5 {
					t.Errorf("message %s: effect applied %d times, want once", id, n)
				}
			}
		}
		if len(counts) != total {
			t.Errorf("effects of %d distinct messages applied, want %d", len(counts), total)
		}
		t.Logf("idempotent consumer: %d distinct effects, %d applied more than once", len(counts), bad)
	}
	e.waitEmpty(e.h.Store)
}

// protocolLimits: one row per protocol limit of the broker, among good rows
// of its own key and of other keys. Each poison row is parked at once (one
// attempt) with the publisher's reason, offered at most twice (in its batch,
// then alone), and every good
// row is published in order, its key flowing on past the parked row. A
// poison row the store refuses when it is written is no row at all: it is
// reported and left out.
func (s *relaySuite) protocolLimits(t *testing.T) {
	e := s.newEnv(t)
	if e.b.Limits == (brokertest.Limits{}) {
		t.Skip("the broker declares no protocol limits (Broker.Limits)")
	}
	perKey := map[string]int{}
	wantParked := map[string]string{} // payload -> key
	want := 0
	i := 0
	for name, bad := range brokertest.LimitPoison(e.topic, e.b.Limits) {
		key := fmt.Sprint("p", i)
		i++
		if bad.Key == "poison" {
			bad.Key = key
		}
		before, after := SeqMessage(e.topic, key, 0), SeqMessage(e.topic, key, 1)
		if err := e.h.Enqueue(e.ctx, bad); err != nil {
			t.Logf("%s: the store refuses the row: %v", name, err)
			continue
		}
		// Write the good rows around the poison one: the poison row is
		// written first, so the key's good rows must pass it.
		e.enqueue(before, after)
		wantParked[string(bad.Payload)] = bad.Key
		perKey[key] = 2
		want += 2
	}
	for k := range 3 {
		key := fmt.Sprint("good", k)
		for seq := range 5 {
			e.enqueue(SeqMessage(e.topic, key, seq))
		}
		perKey[key] = 5
		want += 5
	}
	tally := NewTally(want)
	e.consume(tally.Handler())
	var offered sync.Map
	pub := &FaultyPublisher{Next: e.b.Publisher, Reject: func(m broker.Message) error {
		if _, bad := wantParked[string(m.Payload)]; bad {
			n, _ := offered.LoadOrStore(string(m.Payload), new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
		}
		return nil
	}}
	e.startRelay(e.store(), pub, outbox.Config{})
	tally.Wait(t, e.o.Timeout, "good rows")
	var parked []outbox.Record
	Eventually(t, e.o.Timeout, "poison rows parked", func() (bool, string) {
		var err error
		parked, err = e.h.Store.Parked(e.ctx, outbox.ParkedQuery{})
		return err == nil && len(parked) == len(wantParked), fmt.Sprint(len(parked), err)
	})
	for _, p := range parked {
		if _, ok := wantParked[string(p.Message.Payload)]; !ok || p.Attempts != 1 || !strings.Contains(p.LastError, broker.ErrInvalidMessage.Error()) {
			t.Errorf("parked row %.60q: attempts %d, reason %.200q; want 1 attempt and a reason containing %q",
				p.Message.Payload, p.Attempts, p.LastError, broker.ErrInvalidMessage.Error())
		}
	}
	offered.Range(func(k, v any) bool {
		// Once in its batch, which the publisher refuses as a whole, and
		// once alone, which names it.
		if n := v.(*atomic.Int32).Load(); n > 2 {
			t.Errorf("poison row %q offered to the publisher %d times, want at most 2", k, n)
		}
		return true
	})
	tally.CheckNoDuplicates(t)
	tally.CheckOrder(t, perKey)
}
