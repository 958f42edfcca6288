package cqrstest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// The Consumer cases feed projections from a broker subscription (the
// in-process broker, which redelivers a failed message): messages made by
// eventsource.ToMessage, with duplicates, lost acks, crashes, two
// instances applying the same delivery at once, poison and hostile
// messages.

const consumerTopic = "scores"

// streams is how many streams (message keys) the consumer cases spread
// their events over.
const streams = 50

// scoreMessages returns n messages of ScoreAdded events as the event store
// would publish them (players p0..p9, points i%5+1, over 50 streams with
// growing versions), and the model they project to.
func (h *harness[T]) scoreMessages(n int) ([]broker.Message, Model) {
	h.t.Helper()
	reg := Registry()
	m := Model{Scores: map[string]int64{}}
	out := make([]broker.Message, n)
	for i := range out {
		k := h.n + i
		e := ScoreAdded{Player: fmt.Sprintf("p%d", k%10), Points: int64(k%5 + 1)}
		out[i] = h.message(reg, e, k)
		m.Scores[e.Player] += e.Points
		m.Events++
	}
	h.n += n
	return out, m
}

// message encodes v as the k-th event of the suite's fake log.
func (h *harness[T]) message(reg *eventsource.Registry, v any, k int) broker.Message {
	h.t.Helper()
	d, err := reg.Encode(context.Background(), v)
	if err != nil {
		h.t.Fatal(err)
	}
	d.ID, d.Time = broker.NewID(), time.Now()
	r := eventsource.Record{EventData: d, StreamID: fmt.Sprintf("game-%d", k%streams), Version: int64(k/streams + 1),
		Position: eventsource.Position{Transaction: uint64(1000 + k), Sequence: int64(k + 1)}}
	return eventsource.ToMessage(consumerTopic, r)
}

func addModel(dst *Model, m Model) {
	if dst.Scores == nil {
		dst.Scores = map[string]int64{}
	}
	for k, v := range m.Scores {
		dst.Scores[k] += v
	}
	dst.Events += m.Events
}

func (h *harness[T]) consumer(p cqrs.Projection[T], cfg cqrs.ConsumerConfig) *cqrs.Consumer[T] {
	h.t.Helper()
	once, ok := h.b.Store.(cqrs.OnceStore[T])
	if !ok {
		h.t.Fatalf("store %T does not implement cqrs.OnceStore: it cannot project from a broker subscription", h.b.Store)
	}
	cfg.Logger = h.f.Logger
	c, err := cqrs.NewConsumer(once, Registry(), p, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func (h *harness[T]) broker() *brokermem.Broker {
	b := brokermem.New(brokermem.Config{RedeliveryBackoff: broker.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond}})
	h.t.Cleanup(func() { _ = b.Close() })
	return b
}

// subscribe runs h on bk for group in the background until the returned
// stop is called (or the test ends); stop returns Subscribe's error.
func (h *harness[T]) subscribe(bk *brokermem.Broker, group string, handler broker.Handler) (stop func() error) {
	ctx, cancel := context.WithCancel(h.ctx())
	done := make(chan error, 1)
	go func() {
		done <- bk.Subscribe(ctx, broker.Subscription{Topic: consumerTopic, Group: group, Concurrency: 16}, handler)
	}()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			cancel()
			err = <-done
			stopped = true
		}
		return err
	}
	h.t.Cleanup(func() { _ = stop() })
	return stop
}

// waitDrained waits until group acknowledged every message of the topic.
func (h *harness[T]) waitDrained(bk *brokermem.Broker, group string) {
	h.t.Helper()
	deadline := time.Now().Add(h.f.Timeout)
	for bk.Pending(consumerTopic, group) > 0 {
		if time.Now().After(deadline) {
			h.t.Fatalf("group %s: %d messages still pending after %s", group, bk.Pending(consumerTopic, group), h.f.Timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkOnce checks id's read model, counts and side effects against want:
// every event applied once, its side effect done once.
func (h *harness[T]) checkOnce(id cqrs.ID, want Model) {
	h.t.Helper()
	m, err := h.b.Read(h.ctx(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	if !equal(m, want) {
		h.t.Fatalf("%s: read model %v (events %d), want %v (events %d)", id, m.Scores, m.Events, want.Scores, want.Events)
	}
	st, err := h.b.Store.State(h.ctx(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	if st.Events != want.Events || st.Status != cqrs.StatusRunning {
		h.t.Fatalf("%s: state %+v, want %d events, running", id, st, want.Events)
	}
	effects, err := h.b.Effects(h.ctx(), id.Name)
	if err != nil {
		h.t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range effects {
		if seen[e] {
			h.t.Fatalf("%s: side effect of event %s done twice", id, e)
		}
		seen[e] = true
	}
	if int64(len(effects)) != want.Events {
		h.t.Fatalf("%s: %d side effects, want %d", id, len(effects), want.Events)
	}
}

// consumerProject: every message published twice (the second copies in
// another order), one ack in seven lost after the commit (the message is
// redelivered), two competing consumers: each event applied once.
func consumerProject[T any](h *harness[T]) {
	msgs, want := h.scoreMessages(h.f.Events)
	p := h.projection("broker_scores", 1, cqrs.Stop, nil)
	bk := h.broker()
	ctx := h.ctx()
	if err := bk.Publish(ctx, msgs...); err != nil {
		h.t.Fatal(err)
	}
	again := slices.Clone(msgs)
	rand.Shuffle(len(again), func(i, j int) { again[i], again[j] = again[j], again[i] })
	var lost, n atomic.Int64
	for _, c := range []*cqrs.Consumer[T]{h.consumer(p, cqrs.ConsumerConfig{}), h.consumer(p, cqrs.ConsumerConfig{MaxBatch: 7})} {
		h.subscribe(bk, "g", func(ctx context.Context, d broker.Delivery) error {
			if err := c.Handle(ctx, d); err != nil {
				return err
			}
			if n.Add(1)%7 == 0 {
				lost.Add(1)
				return errors.New("cqrstest: ack lost")
			}
			return nil
		})
	}
	if err := bk.Publish(ctx, again...); err != nil {
		h.t.Fatal(err)
	}
	h.waitDrained(bk, "g")
	if lost.Load() == 0 {
		h.t.Fatal("no ack was lost")
	}
	h.checkOnce(p.ID, want)
}

// Points of the Consumer where the crash case stops it.
var consumerPoints = []string{"cqrs.consumer.received", "cqrs.consumer.applied", "cqrs.consumer.committed"}

// consumerCrashPoints: at each fault point (the consumer's and the
// store's), the delivery fails there on several groups and is redelivered:
// the read model equals a clean replay.
func consumerCrashPoints[T any](h *harness[T]) {
	msgs, want := h.scoreMessages(h.f.Events / 2)
	bk := h.broker()
	if err := bk.Publish(h.ctx(), msgs...); err != nil {
		h.t.Fatal(err)
	}
	for i, point := range append(slices.Clone(consumerPoints), h.f.CrashPoints...) {
		p := h.projection(fmt.Sprintf("broker_crash_%d", i), 1, cqrs.Stop, nil)
		var hits, crashes atomic.Int64
		inj := fault.Injector(func(name string, _ any) error {
			if name != point {
				return nil
			}
			if n := hits.Add(1); n == 2 || n == 5 || n == 9 || n == 30 {
				crashes.Add(1)
				return fmt.Errorf("cqrstest: crash at %s", point)
			}
			return nil
		})
		c := h.consumer(p, cqrs.ConsumerConfig{MaxBatch: 13})
		group := fmt.Sprintf("crash%d", i)
		stop := h.subscribe(bk, group, func(ctx context.Context, d broker.Delivery) error {
			return c.Handle(fault.With(ctx, inj), d)
		})
		h.waitDrained(bk, group)
		if err := stop(); err != nil {
			h.t.Fatalf("%s: %v", point, err)
		}
		if crashes.Load() == 0 {
			h.t.Fatalf("%s: never reached", point)
		}
		h.checkOnce(p.ID, want)
	}
}

// consumerConcurrent: two instances handle every delivery at the same
// moment (a redelivery racing the original): exactly one applies it.
func consumerConcurrent[T any](h *harness[T]) {
	msgs, want := h.scoreMessages(h.f.Events / 2)
	p := h.projection("broker_race", 1, cqrs.Stop, nil)
	a, b := h.consumer(p, cqrs.ConsumerConfig{}), h.consumer(p, cqrs.ConsumerConfig{MaxBatch: 3})
	ctx := h.ctx()
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(msgs))
	const workers = 8
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(msgs); i += workers {
				d := broker.Delivery{Message: msgs[i], Attempt: 1, Partition: -1, Offset: -1}
				var inner sync.WaitGroup
				for _, c := range []*cqrs.Consumer[T]{a, b} {
					inner.Go(func() {
						if err := c.Handle(ctx, d); err != nil {
							errs <- err
						}
					})
				}
				inner.Wait()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		h.t.Fatalf("Handle: %v", err)
	}
	h.checkOnce(p.ID, want)
}

// hostile returns messages a producer the library does not control could
// send: no library headers, a malformed position, an unregistered type,
// an undecodable payload.
func (h *harness[T]) hostile() []broker.Message {
	reg := Registry()
	noHeaders := broker.Message{ID: broker.NewID(), Topic: consumerTopic, Key: "game-x", Payload: []byte(`{"player":"px","points":1}`)}
	badPos := h.message(reg, ScoreAdded{Player: "px", Points: 1}, h.n)
	badPos.Headers[eventsource.HeaderPosition] = "-1:\x00"
	unknown := h.message(reg, ScoreAdded{Player: "px", Points: 1}, h.n+1)
	unknown.Headers[broker.HeaderType] = "score.removed"
	garbage := h.message(reg, ScoreAdded{Player: "px", Points: 1}, h.n+2)
	garbage.Payload = []byte("{not json")
	h.n += 3
	return []broker.Message{noHeaders, badPos, unknown, garbage}
}

// longID returns a valid event message whose ID is too long to record.
func (h *harness[T]) longID() broker.Message {
	m := h.message(Registry(), ScoreAdded{Player: "px", Points: 1}, h.n)
	h.n++
	m.ID = strings.Repeat("x", 5000)
	return m
}

// consumerPoison: Skip records poison and hostile messages as skipped and
// goes on; Stop ends Run with the poison, records the stopped status, and
// leaves the message in the broker; Retry applies a flaky event once.
func consumerPoison[T any](h *harness[T]) {
	ctx := h.ctx()
	reg := Registry()

	// Skip.
	good, want := h.scoreMessages(h.f.Events / 10)
	bad := append(h.hostile(), h.message(reg, ScoreAdded{Player: "px", Points: -5}, h.n))
	h.n++
	bk := h.broker()
	if err := bk.Publish(ctx, append(good, bad...)...); err != nil {
		h.t.Fatal(err)
	}
	p := h.projection("broker_skip", 1, cqrs.Skip, nil)
	c := h.consumer(p, cqrs.ConsumerConfig{})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx, bk, broker.Subscription{Topic: consumerTopic, Group: "skip"}) }()
	h.waitDrained(bk, "skip")
	cancel()
	if err := <-done; err != nil {
		h.t.Fatalf("Run under Skip: %v", err)
	}
	h.checkOnce(p.ID, want)
	if st, _ := h.b.Store.State(ctx, p.ID); st.Skipped != int64(len(bad)) {
		h.t.Fatalf("skip: %d events recorded as skipped, want %d", st.Skipped, len(bad))
	}
	// An ID too long to record is dropped under Skip and stops under Stop.
	long := h.longID()
	if err := c.Handle(ctx, broker.Delivery{Message: long, Attempt: 1}); err != nil {
		h.t.Fatalf("skip: a 5,000-byte ID: %v", err)
	}
	h.checkOnce(p.ID, want)
	if err := h.consumer(h.projection("broker_longid", 1, cqrs.Stop, nil), cqrs.ConsumerConfig{}).Handle(ctx,
		broker.Delivery{Message: long, Attempt: 1}); !errors.Is(err, eventsource.ErrInvalidEvent) {
		h.t.Fatalf("stop: a 5,000-byte ID: %v, want ErrInvalidEvent", err)
	}

	// Stop, on each kind of bad message.
	checks := []func(error) bool{
		func(err error) bool { return errors.Is(err, eventsource.ErrInvalidEvent) },
		func(err error) bool { return errors.Is(err, eventsource.ErrInvalidEvent) },
		func(err error) bool { var u *eventsource.UnknownEventError; return errors.As(err, &u) },
		func(err error) bool { var d *eventsource.DecodeError; return errors.As(err, &d) },
		func(err error) bool {
			var pe *cqrs.PoisonError
			return errors.Is(err, cqrs.ErrPoison) && errors.As(err, &pe)
		},
	}
	for i, m := range bad {
		bk := h.broker()
		if err := bk.Publish(ctx, m); err != nil {
			h.t.Fatal(err)
		}
		p := h.projection(fmt.Sprintf("broker_stop_%d", i), 1, cqrs.Stop, nil)
		c := h.consumer(p, cqrs.ConsumerConfig{})
		sub := broker.Subscription{Topic: consumerTopic, Group: "stop"}
		err := c.Run(ctx, bk, sub)
		if !checks[i](err) {
			h.t.Fatalf("stop on bad message %d: Run returned %v", i, err)
		}
		st, _ := h.b.Store.State(ctx, p.ID)
		if st.Status != cqrs.StatusStopped || st.Error == "" {
			h.t.Fatalf("stop on bad message %d: state %+v, want stopped with the error", i, st)
		}
		if err := c.Run(ctx, bk, sub); !errors.Is(err, cqrs.ErrStopped) {
			h.t.Fatalf("stop on bad message %d: Run after the stop returned %v, want ErrStopped", i, err)
		}
		if n := bk.Pending(consumerTopic, "stop"); n != 1 {
			h.t.Fatalf("stop on bad message %d: %d messages pending, want the bad one kept", i, n)
		}
		if err := h.b.Store.Reset(ctx, p.ID); err != nil {
			h.t.Fatal(err)
		}
		if err := c.Run(ctx, bk, sub); !checks[i](err) {
			h.t.Fatalf("stop on bad message %d after Reset: Run returned %v, want the same failure again", i, err)
		}
	}

	// Retry: a flaky event fails twice, then applies once.
	bk = h.broker()
	flaky := h.message(reg, ScoreAdded{Player: "pf", Points: Flaky}, h.n)
	h.n++
	if err := bk.Publish(ctx, flaky); err != nil {
		h.t.Fatal(err)
	}
	cnt := &counters{flakyOK: 2}
	p = h.projection("broker_retry", 1, cqrs.Retry, cnt)
	c = h.consumer(p, cqrs.ConsumerConfig{})
	runCtx, cancel = context.WithCancel(ctx)
	go func() { done <- c.Run(runCtx, bk, broker.Subscription{Topic: consumerTopic, Group: "retry"}) }()
	h.waitDrained(bk, "retry")
	cancel()
	if err := <-done; err != nil {
		h.t.Fatalf("Run under Retry: %v", err)
	}
	if cnt.flaky != 2 {
		h.t.Fatalf("retry: the handler failed %d times, want 2", cnt.flaky)
	}
	h.checkOnce(p.ID, Model{Scores: map[string]int64{"pf": Flaky}, Events: 1})
}
