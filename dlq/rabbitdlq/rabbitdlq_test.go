package rabbitdlq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/dlqtest"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func testLogger() *slog.Logger {
	if os.Getenv("STEADFAST_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is a connection to the shared RabbitMQ node with a publisher; the
// topologies it declares are deleted at cleanup.
type env struct {
	url  string
	conn *rabbitmq.Conn
	pub  *rabbitmq.Publisher
}

func newEnv(t *testing.T) *env {
	t.Helper()
	url := testenv.RabbitMQURL(t)
	conn, err := rabbitmq.Dial(ctxT(t), rabbitmq.Config{URL: url, Name: t.Name(), Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = pub.Close()
		conn.Close()
	})
	return &env{url: url, conn: conn, pub: pub}
}

// consumer creates a Consumer (with the retry chain of cfg.Policy for
// RetryRedeliver, unless chain says otherwise) and declares its topology,
// which is deleted at cleanup.
func (e *env) consumer(t *testing.T, cfg dlq.Config, chain *rabbitmq.RetryChain, topic, group string) *rabbitdlq.Consumer {
	t.Helper()
	sc := rabbitmq.SubscriberConfig{Logger: testLogger()}
	if cfg.Retries == dlq.RetryRedeliver {
		if chain == nil {
			chain = rabbitdlq.RetryChain(cfg.Policy)
		}
		sc.Groups.Retry = chain
	}
	c, err := rabbitdlq.NewConsumer(rabbitdlq.Config{Conn: e.conn, Subscriber: sc, DLQ: cfg})
	if err != nil {
		t.Fatal(err)
	}
	topo, err := c.Topology(topic, group)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.conn.Delete(ctx, topo); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	if err := c.Setup(ctxT(t), topic, group); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) inspector(t *testing.T, queue string, replay broker.Publisher) *rabbitdlq.Inspector {
	t.Helper()
	in, err := rabbitdlq.NewInspector(rabbitdlq.InspectorConfig{URL: e.url, Queue: queue, Logger: testLogger(), Publisher: replay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close() })
	return in
}

func dlqName(topic, group string) string {
	return dlq.DeadLetterTopic(dlq.Envelope{Topic: topic, Group: group})
}

// TestConformance runs the dlq suite on RabbitMQ: retries in process,
// and through the TTL/dead-letter-exchange retry chain.
func TestConformance(t *testing.T) {
	t.Parallel()
	dlqtest.Run(t, dlqtest.Features{Retries: []dlq.Retries{dlq.RetryInProcess, dlq.RetryRedeliver}, DelayPrecision: time.Millisecond, MaxHeaderBytes: 100_000}, func(t *testing.T) dlqtest.Backend {
		e := newEnv(t)
		return dlqtest.Backend{
			Publisher: e.pub,
			Consumer: func(t *testing.T, cfg dlq.Config, topic, group string) dlqtest.Consumer {
				return e.consumer(t, cfg, nil, topic, group)
			},
			Inspector: func(t *testing.T, topic, group string, replay broker.Publisher) dlq.Inspector {
				return e.inspector(t, dlqName(topic, group), replay)
			},
		}
	})
}

// refusing fails every publish while on is set.
type refusing struct {
	broker.Publisher
	on atomic.Bool
}

func (p *refusing) Publish(ctx context.Context, msgs ...broker.Message) error {
	if p.on.Load() {
		return errors.New("dead-letter exchange unavailable")
	}
	return p.Publisher.Publish(ctx, msgs...)
}

// TestChainParksWhenDeadLetterPublishFails: with the retry chain, a
// dead-letter publish that fails on the last attempt rejects the message
// into the chain, which parks it: nothing is lost. The Inspector lists the
// parking queue with what x-death tells (original topic, key, queue,
// attempts) and replays it to the original topic, where the fixed handler
// gets it from attempt 1 without the broker's history headers.
func TestChainParksWhenDeadLetterPublishFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	pub := &refusing{Publisher: e.pub}
	pub.on.Store(true)
	policy := dlq.Policy{MaxAttempts: 2, Backoff: broker.Backoff{Initial: 10 * time.Millisecond}}
	c := e.consumer(t, dlq.Config{Publisher: pub, Retries: dlq.RetryRedeliver, Policy: policy}, nil, topic, group)
	m := broker.NewMessage(topic, []byte("poison"))
	m.Key = "customer-1"
	m.Headers = map[string]string{"type": "OrderPlaced"}
	if err := e.pub.Publish(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
	var fixed atomic.Bool
	var mu sync.Mutex
	var seen []broker.Delivery
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			seen = append(seen, d)
			mu.Unlock()
			if !fixed.Load() {
				return errors.New("bug")
			}
			return nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	parking := e.inspector(t, rabbitmq.ParkingQueue(rabbitmq.Groups{}.QueueFor(topic, group)), nil)
	var dls []dlq.DeadLetter
	for deadline := time.Now().Add(2 * time.Minute); len(dls) == 0; time.Sleep(50 * time.Millisecond) {
		var err error
		if dls, err = parking.List(ctxT(t), dlq.Filter{}); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the message was not parked")
		}
	}
	dl := dls[0]
	if dl.ID() != m.ID || !errors.Is(dl.EnvelopeErr, dlq.ErrNoEnvelope) {
		t.Fatalf("parked %s (%v), want %s without envelope", dl.ID(), dl.EnvelopeErr, m.ID)
	}
	q := rabbitmq.Groups{}.QueueFor(topic, group)
	if env := dl.Envelope; env.Topic != topic || env.Key != m.Key || env.Queue != q || env.Attempts != 2 || env.FirstFailure.IsZero() {
		t.Errorf("envelope from x-death %+v", env)
	}
	if dl.Message.Headers["type"] != "OrderPlaced" || dl.Message.Headers[rabbitmq.HeaderDeath] == "" {
		t.Errorf("parked headers %v", dl.Message.Headers)
	}
	fixed.Store(true)
	if n, err := parking.Replay(ctxT(t), dlq.Filter{}, dlq.ReplayOptions{}); n != 1 || err != nil {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replay not handled: %d deliveries", n)
		}
	}
	mu.Lock()
	last := seen[2]
	mu.Unlock()
	if last.Attempt != 1 || last.Key != m.Key || last.Topic != topic || last.Headers[rabbitmq.HeaderDeath] != "" || last.Headers[dlq.HeaderReplays] != "1" {
		t.Errorf("replayed delivery attempt %d %s/%s headers %v", last.Attempt, last.Topic, last.Key, last.Headers)
	}
	if n := len(list(t, parking)); n != 0 {
		t.Errorf("%d messages left in the parking queue", n)
	}
}

func list(t *testing.T, in dlq.Inspector) []dlq.DeadLetter {
	t.Helper()
	dls, err := in.List(ctxT(t), dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return dls
}

// TestChainDelayDoesNotStallTheQueue: a message waiting in a retry queue
// with a one-hour TTL is not retried early, and the later messages of its
// key and of other keys are handled meanwhile.
func TestChainDelayDoesNotStallTheQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	chain := &rabbitmq.RetryChain{Delays: []time.Duration{time.Hour}}
	c := e.consumer(t, dlq.Config{Retries: dlq.RetryRedeliver}, chain, topic, group)
	var msgs []broker.Message
	for i := range 20 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprint("customer-", i%2)
		msgs = append(msgs, m)
	}
	if err := e.pub.Publish(ctxT(t), msgs...); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]int{}
	var order []string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			seen[d.ID] = append(seen[d.ID], d.Attempt)
			if d.ID == msgs[0].ID {
				return errors.New("fails")
			}
			order = append(order, d.ID)
			return nil
		})
	}()
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(order)
		mu.Unlock()
		if n == 19 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 19 messages handled: the waiting retry stalls the queue", n)
		}
	}
	time.Sleep(300 * time.Millisecond) // room for an early retry to show
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := seen[msgs[0].ID]; !slices.Equal(got, []int{1}) {
		t.Errorf("failed message handled with attempts %v, want [1] (its retry is due in an hour)", got)
	}
	ch := rawChannel(t, e.url)
	q, err := ch.QueueDeclarePassive(rabbitmq.RetryQueue(rabbitmq.Groups{}.QueueFor(topic, group), 1), true, false, false, false, nil)
	if err != nil || q.Messages != 1 {
		t.Errorf("retry queue holds %d messages (%v), want 1", q.Messages, err)
	}
}

func rawChannel(t *testing.T, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	chain := &rabbitmq.RetryChain{Delays: []time.Duration{time.Millisecond}}
	bad := map[string]rabbitdlq.Config{
		"no conn":            {},
		"retry topics":       {Conn: e.conn, DLQ: dlq.Config{Retries: dlq.RetryTopics}},
		"chain in process":   {Conn: e.conn, Subscriber: rabbitmq.SubscriberConfig{Groups: rabbitmq.Groups{Retry: chain}}},
		"policy beyond":      {Conn: e.conn, Subscriber: rabbitmq.SubscriberConfig{Groups: rabbitmq.Groups{Retry: chain}}, DLQ: dlq.Config{Retries: dlq.RetryRedeliver, Policy: dlq.Policy{MaxAttempts: 3}}},
		"adapter drops":      {Conn: e.conn, Subscriber: rabbitmq.SubscriberConfig{MaxAttempts: 2}},
		"bad policy":         {Conn: e.conn, DLQ: dlq.Config{Policy: dlq.Policy{Backoff: broker.Backoff{Jitter: 2}}}},
		"unknown retry mode": {Conn: e.conn, DLQ: dlq.Config{Retries: dlq.Retries(7)}},
	}
	for name, cfg := range bad {
		if _, err := rabbitdlq.NewConsumer(cfg); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("%s: NewConsumer = %v, want ErrInvalidConfig", name, err)
		}
	}
	for _, cfg := range []rabbitdlq.InspectorConfig{{URL: e.url}, {Queue: "q"}, {URL: "http://x", Queue: "q"}} {
		if _, err := rabbitdlq.NewInspector(cfg); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("NewInspector(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if got := rabbitdlq.RetryChain(dlq.Policy{MaxAttempts: 4, Backoff: broker.Backoff{Initial: time.Second}}); got == nil || !slices.Equal(got.Delays, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}) {
		t.Errorf("RetryChain = %+v", got)
	}
	if rabbitdlq.RetryChain(dlq.Policy{MaxAttempts: 1}) != nil {
		t.Error("RetryChain of a single attempt is not nil")
	}
}
