package idempotencytest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
)

func (s *suite) consumerCases() []testCase {
	return []testCase{
		{"DuplicatesSkipped", s.duplicatesSkipped},
		{"FailedHandlerRedelivered", s.failedHandlerRedelivered},
		{"CrashBeforeAck", s.crashBeforeAck},
		{"ConcurrentDeliveries", s.concurrentDeliveries},
		{"ConcurrentDeliveriesThroughBroker", s.concurrentDeliveriesThroughBroker},
		{"PanicFreesKey", s.panicFreesKey},
		{"KeyStrategies", s.keyStrategies},
		{"ConsumersAreSeparate", s.consumersAreSeparate},
		{"DuplicatesReported", s.duplicatesReported},
	}
}

// effects counts the business effects per message ID.
type effects struct {
	mu    sync.Mutex
	calls map[string]int // handler calls
	done  map[string]int // successful effects
}

func newEffects() *effects {
	return &effects{calls: map[string]int{}, done: map[string]int{}}
}

func (e *effects) call(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls[id]++
	return e.calls[id]
}

func (e *effects) effect(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.done[id]++
}

func (e *effects) counts(id string) (calls, done int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[id], e.done[id]
}

// handler is the plain handler of the consumer cases behind the default
// middleware on st: every run records a call and an effect.
func (e *effects) handler(t *testing.T, st idempotency.Store) broker.Handler {
	return broker.Chain(func(_ context.Context, d broker.Delivery) error {
		e.call(d.ID)
		e.effect(d.ID)
		return nil
	}, middleware(t, st, idempotency.ConsumerConfig{}))
}

func middleware(t *testing.T, st idempotency.Store, cfg idempotency.ConsumerConfig) broker.Middleware {
	t.Helper()
	mw, err := idempotency.Consumer(st, cfg)
	if err != nil {
		t.Fatalf("idempotency.Consumer: %v", err)
	}
	return mw
}

// consume runs h on a memory broker subscription until every message of
// topic is acknowledged, then stops it.
func (s *suite) consume(t *testing.T, b *memory.Broker, topic, group string, concurrency int, h broker.Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- b.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group, Concurrency: concurrency}, h)
	}()
	deadline := time.Now().Add(s.f.Timeout)
	for b.Pending(topic, group) > 0 {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("%d messages of %s still unacknowledged by group %s after %v", b.Pending(topic, group), topic, group, s.f.Timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
}

func newBroker(t *testing.T) *memory.Broker {
	b := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(2 * time.Millisecond)})
	t.Cleanup(func() { b.Close() })
	return b
}

func publish(t *testing.T, b *memory.Broker, msgs ...broker.Message) {
	t.Helper()
	if err := b.Publish(context.Background(), msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// The same message delivered five times (the producer retried) runs the
// handler once; every delivery is acknowledged.
func (s *suite) duplicatesSkipped(t *testing.T) {
	st := s.store(t, longLease)
	b := newBroker(t)
	topic, group := unique("orders"), unique("billing")
	fx := newEffects()
	h := fx.handler(t, st)
	ids := []string{unique("m1"), unique("m2"), unique("m3")}
	for range 5 {
		for _, id := range ids {
			m := broker.NewMessage(topic, []byte(id))
			m.ID, m.Key = id, "k" // one key: strictly sequential deliveries
			publish(t, b, m)
		}
	}
	s.consume(t, b, topic, group, 4, h)
	for _, id := range ids {
		if calls, done := fx.counts(id); calls != 1 || done != 1 {
			t.Fatalf("message %s: handler called %d times, %d effects; want 1 and 1", id, calls, done)
		}
	}
}

// A handler error never marks the key: the broker's redelivery runs the
// handler again, and it then succeeds once.
func (s *suite) failedHandlerRedelivered(t *testing.T) {
	st := s.store(t, longLease)
	b := newBroker(t)
	topic, group := unique("orders"), unique("billing")
	fx := newEffects()
	h := broker.Chain(func(_ context.Context, d broker.Delivery) error {
		if n := fx.call(d.ID); n <= 2 {
			return fmt.Errorf("transient failure %d", n)
		}
		fx.effect(d.ID)
		return nil
	}, middleware(t, st, idempotency.ConsumerConfig{}))
	m := broker.NewMessage(topic, []byte("x"))
	publish(t, b, m)
	s.consume(t, b, topic, group, 2, h)
	if calls, done := fx.counts(m.ID); calls != 3 || done != 1 {
		t.Fatalf("handler called %d times with %d effects, want 3 calls (2 failures, then success) and 1 effect", calls, done)
	}
	// And the key is done now: a later duplicate is skipped.
	publish(t, b, m)
	s.consume(t, b, topic, group, 2, h)
	if calls, done := fx.counts(m.ID); calls != 3 || done != 1 {
		t.Fatalf("duplicate after success: %d calls, %d effects; want 3 and 1", calls, done)
	}
}

// The handler's effect happened and the key was marked, but the ack was lost
// (the process died before acknowledging): the redelivery is skipped.
func (s *suite) crashBeforeAck(t *testing.T) {
	st := s.store(t, longLease)
	b := newBroker(t)
	topic, group := unique("orders"), unique("billing")
	fx := newEffects()
	inner := fx.handler(t, st)
	var lostAcks atomic.Int64
	h := func(ctx context.Context, d broker.Delivery) error {
		if err := inner(ctx, d); err != nil {
			return err
		}
		if d.Attempt == 1 {
			lostAcks.Add(1)
			return errors.New("ack lost: the process died after the effect")
		}
		return nil
	}
	msgs := []broker.Message{broker.NewMessage(topic, []byte("a")), broker.NewMessage(topic, []byte("b"))}
	publish(t, b, msgs...)
	s.consume(t, b, topic, group, 2, h)
	if lostAcks.Load() != 2 {
		t.Fatalf("%d lost acks simulated, want 2", lostAcks.Load())
	}
	for _, m := range msgs {
		if calls, done := fx.counts(m.ID); calls != 1 || done != 1 {
			t.Fatalf("message %s: handler called %d times with %d effects after a lost ack, want 1 and 1", m.ID, calls, done)
		}
	}
}

// The same delivery handed to 50 goroutines at once, each retrying while
// the store says "in progress" (as a broker redelivers), makes exactly one
// effect, and every goroutine ends acknowledged.
func (s *suite) concurrentDeliveries(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	fx := newEffects()
	c := NewContention(50)
	h := broker.Chain(func(_ context.Context, d broker.Delivery) error {
		fx.call(d.ID)
		c.Hold() // keep the key until every other goroutine met it held
		fx.effect(d.ID)
		return nil
	}, middleware(t, st, idempotency.ConsumerConfig{}))
	d := broker.Delivery{Message: broker.NewMessage("orders", []byte("x")), Attempt: 1, Group: unique("billing"), Partition: -1, Offset: -1}
	c.Deliver(ctx, t, d, h)
	if calls, done := fx.counts(d.ID); calls != 1 || done != 1 {
		t.Fatalf("50 concurrent deliveries: handler called %d times with %d effects, want 1 and 1", calls, done)
	}
	t.Logf("50 concurrent deliveries: 1 effect, %d in-progress answers", c.InProgress())
}

// 50 copies of one message without a key go through a broker with 50
// concurrent handlers: one effect, all acknowledged.
func (s *suite) concurrentDeliveriesThroughBroker(t *testing.T) {
	st := s.store(t, longLease)
	b := newBroker(t)
	topic, group := unique("orders"), unique("billing")
	fx := newEffects()
	h := fx.handler(t, st)
	m := broker.NewMessage(topic, []byte("x"))
	const n = 50
	msgs := make([]broker.Message, n)
	for i := range msgs {
		msgs[i] = m
	}
	publish(t, b, msgs...)
	s.consume(t, b, topic, group, n, h)
	if calls, done := fx.counts(m.ID); calls != 1 || done != 1 {
		t.Fatalf("%d deliveries: handler called %d times with %d effects, want 1 and 1", n, calls, done)
	}
}

// A panicking handler frees the key: the panic propagates, and the next
// delivery runs the handler.
func (s *suite) panicFreesKey(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	fx := newEffects()
	h := broker.Chain(func(_ context.Context, d broker.Delivery) error {
		if fx.call(d.ID) == 1 {
			panic("handler bug")
		}
		fx.effect(d.ID)
		return nil
	}, middleware(t, st, idempotency.ConsumerConfig{}))
	d := broker.Delivery{Message: broker.NewMessage("orders", nil), Group: unique("g"), Partition: -1, Offset: -1}
	func() {
		defer func() {
			if r := recover(); r != "handler bug" {
				t.Errorf("recovered %v, want the handler's panic", r)
			}
		}()
		_ = h(ctx, d)
	}()
	if err := h(ctx, d); err != nil {
		t.Fatalf("delivery after a panic: %v", err)
	}
	if err := h(ctx, d); err != nil {
		t.Fatalf("duplicate: %v", err)
	}
	if calls, done := fx.counts(d.ID); calls != 2 || done != 1 {
		t.Fatalf("handler called %d times with %d effects, want 2 and 1", calls, done)
	}
}

// Key strategies: a header, Kafka's topic:partition:offset and a business
// key; deliveries without a key fail with ErrNoKey and never reach the
// handler.
func (s *suite) keyStrategies(t *testing.T) {
	ctx := s.ctx(t)
	st := s.store(t, longLease)
	type tc struct {
		name string
		key  idempotency.KeyFunc
		same []broker.Delivery // deliveries that are the same work
		none broker.Delivery   // a delivery with no key
	}
	msg := func(id string, headers map[string]string, payload string) broker.Message {
		return broker.Message{ID: id, Topic: "orders", Headers: headers, Payload: []byte(payload)}
	}
	orderID := func(d broker.Delivery) (string, error) {
		if len(d.Payload) == 0 {
			return "", fmt.Errorf("%w: empty payload", idempotency.ErrNoKey)
		}
		return "order:" + string(d.Payload), nil
	}
	cases := []tc{
		{
			name: "header",
			key:  idempotency.Header("request-id"),
			same: []broker.Delivery{
				{Message: msg("id-1", map[string]string{"request-id": "r-1"}, "a"), Partition: -1, Offset: -1},
				{Message: msg("id-2", map[string]string{"request-id": "r-1"}, "b"), Partition: -1, Offset: -1},
			},
			none: broker.Delivery{Message: msg("id-3", nil, "c"), Partition: -1, Offset: -1},
		},
		{
			name: "kafka-offset",
			key:  idempotency.KafkaOffset,
			same: []broker.Delivery{
				{Message: msg("id-1", nil, "a"), Partition: 3, Offset: 42},
				{Message: msg("id-2", nil, "a"), Partition: 3, Offset: 42, Attempt: 2, Redelivered: true},
			},
			none: broker.Delivery{Message: msg("id-3", nil, "c"), Partition: -1, Offset: -1},
		},
		{
			name: "business-key",
			key:  orderID,
			same: []broker.Delivery{
				{Message: msg("id-1", nil, "o-7"), Partition: -1, Offset: -1},
				{Message: msg("id-2", nil, "o-7"), Partition: -1, Offset: -1},
			},
			none: broker.Delivery{Message: msg("id-3", nil, ""), Partition: -1, Offset: -1},
		},
		{
			name: "message-id",
			key:  nil, // the default
			same: []broker.Delivery{
				{Message: msg("id-1", nil, "a"), Partition: 0, Offset: 1},
				{Message: msg("id-1", nil, "b"), Partition: 0, Offset: 2},
			},
			none: broker.Delivery{Message: msg("", nil, "c"), Partition: -1, Offset: -1},
		},
	}
	for _, c := range cases {
		var calls atomic.Int64
		h := broker.Chain(func(context.Context, broker.Delivery) error {
			calls.Add(1)
			return nil
		}, middleware(t, st, idempotency.ConsumerConfig{Consumer: unique(c.name), Key: c.key}))
		for i, d := range c.same {
			if err := h(ctx, d); err != nil {
				t.Fatalf("%s: delivery %d: %v", c.name, i, err)
			}
		}
		if calls.Load() != 1 {
			t.Fatalf("%s: handler ran %d times for %d deliveries of the same work, want 1", c.name, calls.Load(), len(c.same))
		}
		if err := h(ctx, c.none); !errors.Is(err, idempotency.ErrNoKey) {
			t.Fatalf("%s: delivery without a key = %v, want ErrNoKey", c.name, err)
		}
		if calls.Load() != 1 {
			t.Fatalf("%s: handler ran for a delivery without a key", c.name)
		}
	}
	if _, err := idempotency.Consumer(nil, idempotency.ConsumerConfig{}); !errors.Is(err, idempotency.ErrNilStore) {
		t.Fatalf("Consumer(nil) = %v, want ErrNilStore", err)
	}
	// A key the stores cannot hold is refused before the store is asked.
	h := broker.Chain(func(context.Context, broker.Delivery) error { return nil },
		middleware(t, st, idempotency.ConsumerConfig{Consumer: unique("bad")}))
	if err := h(ctx, broker.Delivery{Message: msg("bad\x00id", nil, "")}); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Fatalf("delivery with a NUL in its ID = %v, want ErrInvalidKey", err)
	}
}

// Two consumer groups each process a message once; the default scope is
// the delivery's group.
func (s *suite) consumersAreSeparate(t *testing.T) {
	st := s.store(t, longLease)
	b := newBroker(t)
	topic := unique("orders")
	fx := newEffects()
	h := broker.Chain(func(_ context.Context, d broker.Delivery) error {
		fx.call(d.Group + "/" + d.ID)
		return nil
	}, middleware(t, st, idempotency.ConsumerConfig{}))
	m := broker.NewMessage(topic, []byte("x"))
	publish(t, b, m, m)
	groups := []string{unique("billing"), unique("shipping")}
	for _, g := range groups {
		s.consume(t, b, topic, g, 2, h)
	}
	for _, g := range groups {
		if calls, _ := fx.counts(g + "/" + m.ID); calls != 1 {
			t.Fatalf("group %s: handler ran %d times, want 1", g, calls)
		}
	}
}

// ConsumerConfig.OnDuplicate hears of every delivery skipped as a
// duplicate, and of nothing else.
func (s *suite) duplicatesReported(t *testing.T) {
	st := s.store(t, longLease)
	var mu sync.Mutex
	var dups []string
	cfg := idempotency.ConsumerConfig{Consumer: unique("c"), OnDuplicate: func(_ context.Context, d broker.Delivery) {
		mu.Lock()
		defer mu.Unlock()
		dups = append(dups, d.ID)
	}}
	var calls atomic.Int64
	h := broker.Chain(func(context.Context, broker.Delivery) error { calls.Add(1); return nil }, middleware(t, st, cfg))
	ctx := context.Background()
	a, b := broker.Delivery{Message: broker.NewMessage("t", nil)}, broker.Delivery{Message: broker.NewMessage("t", nil)}
	for _, d := range []broker.Delivery{a, a, b, a, b} {
		if err := h(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if calls.Load() != 2 || len(dups) != 3 || dups[0] != a.ID || dups[1] != a.ID || dups[2] != b.ID {
		t.Fatalf("handler calls %d, duplicates reported %v; want 2 calls and [a a b]", calls.Load(), dups)
	}
}
