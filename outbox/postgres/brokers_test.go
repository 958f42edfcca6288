package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/idempotency"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// kafkaBroker is a Kafka-protocol cluster (STEADFAST_KAFKA_BROKERS or an
// in-process kfake cluster per test) with a topic of 4 partitions per case.
func kafkaBroker(t *testing.T) outboxtest.Broker {
	return kafkaBrokerAt(t, testenv.Kafka(t))
}

// kafkaBrokerAt is kafkaBroker on the cluster at seeds.
func kafkaBrokerAt(t *testing.T, seeds []string) outboxtest.Broker {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: seeds}})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Config:            kafka.Config{Brokers: seeds},
		RetryBackoff:      broker.Backoff{Initial: 5 * time.Millisecond, Max: 50 * time.Millisecond, Jitter: -1},
		CommitInterval:    200 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kafka.NewAdmin(kafka.Config{Brokers: seeds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sub.Close()
		_ = pub.Close()
		admin.Close()
	})
	return outboxtest.Broker{
		Publisher:  pub,
		Subscriber: sub,
		Setup: func(ctx context.Context, topic, _ string) error {
			return admin.CreateTopic(ctx, kafka.TopicSpec{Name: topic, Partitions: 4})
		},
	}
}

// rabbitBroker is the shared RabbitMQ node; each case declares its own
// exchange and queue, deleted at cleanup.
func rabbitBroker(t *testing.T) outboxtest.Broker {
	return rabbitBrokerAt(t, testenv.RabbitMQURL(t))
}

func rabbitBrokerAt(t *testing.T, url string) outboxtest.Broker {
	dial := func() *rabbitmq.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url, Name: t.Name(),
			Reconnect: broker.Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Multiplier: 1.5, Jitter: 0.5}})
		if err != nil {
			t.Fatalf("rabbitmq dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	pub, err := rabbitmq.NewPublisher(dial(), rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(dial(), rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var topos []rabbitmq.Topology
	t.Cleanup(func() {
		sub.Close()
		pub.Close()
		if len(topos) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url})
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer c.Close()
		for _, topo := range topos {
			if err := c.Delete(ctx, topo); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	})
	return outboxtest.Broker{
		Publisher:  pub,
		Subscriber: sub,
		Setup: func(ctx context.Context, topic, group string) error {
			topo, err := sub.Topology(topic, group)
			if err != nil {
				return err
			}
			topos = append(topos, topo)
			return sub.Setup(ctx, topic, group)
		},
		Limits: brokertest.Limits{MaxNameBytes: rabbitmq.MaxNameBytes, UTF8Topic: true, MaxHeaders: rabbitmq.MaxHeaders - 2},
	}
}

// effects is an idempotent consumer on the harness's database: it applies
// each delivery's effect (a row in effects) in the transaction that claims
// the message ID in the idempotency store.
func effects(t *testing.T) (broker.Handler, func(context.Context) (map[string]int, error)) {
	pool := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (message_id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store, err := idempg.New(pool, idempg.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := store.Handler(idempotency.ConsumerConfig{Consumer: "outbox-crash"},
		func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
			_, err := tx.Exec(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, d.ID)
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	return h, func(ctx context.Context) (map[string]int, error) {
		rows, err := pool.Query(ctx, `SELECT message_id, count(*) FROM effects GROUP BY message_id`)
		if err != nil {
			return nil, err
		}
		out := map[string]int{}
		for rows.Next() {
			var id string
			var n int
			if err := rows.Scan(&id, &n); err != nil {
				return nil, err
			}
			out[id] = n
		}
		return out, rows.Err()
	}
}

func TestRelayKafka(t *testing.T) {
	t.Parallel()
	outboxtest.RunRelay(t, factory(postgres.Config{}), kafkaBroker, outboxtest.Options{Effects: effects})
}

func TestRelayRabbitMQ(t *testing.T) {
	t.Parallel()
	outboxtest.RunRelay(t, factory(postgres.Config{}), rabbitBroker, outboxtest.Options{Effects: effects})
}

// brokerOutage drives a relay through a real broker outage: messages
// enqueued while the broker is down stay pending with no attempt charged
// (MaxAttempts is 2, so charging would park them), and drain in per-key
// order once it is back.
func brokerOutage(t *testing.T, b outboxtest.Broker, outage func(enqueue func())) {
	h := newHarness(t, postgres.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	topic, group := testenv.Name(t, "t"), testenv.Name(t, "g")
	if err := b.Setup(ctx, topic, group); err != nil {
		t.Fatalf("setup: %v", err)
	}
	const perKey, keys = 30, 10
	tally := outboxtest.NewTally(1 << 30) // waited on by count below
	subCtx, stopSub := context.WithCancel(context.Background())
	subDone := make(chan error, 1)
	go func() {
		subDone <- b.Subscriber.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: group}, tally.Handler())
	}()
	defer func() {
		stopSub()
		if err := <-subDone; err != nil {
			t.Errorf("subscribe: %v", err)
		}
	}()
	failed := &outboxtest.FaultyPublisher{Next: b.Publisher}
	var failures, unmarked atomic.Int32
	counting := publisherFunc(func(ctx context.Context, msgs ...broker.Message) error {
		err := failed.Publish(ctx, msgs...)
		if err != nil {
			failures.Add(1)
			// An adapter reports an outage as broker.ErrUnavailable (or
			// the relay's PublishTimeout ran out), so the relay charges
			// no attempt without having to know the adapter's errors.
			if !errors.Is(err, broker.ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
				if unmarked.Add(1) <= 3 {
					t.Logf("publish error during the outage not marked broker.ErrUnavailable: %v", err)
				}
			}
		}
		return err
	})
	r, err := outbox.NewRelay(h.open(t), counting, outbox.Config{
		MaxAttempts:    2,
		Backoff:        broker.ConstantBackoff(10 * time.Millisecond),
		PublishTimeout: time.Second,
		// Batches small enough to publish well within PublishTimeout on a
		// loaded machine: a batch cut short by it is retried whole.
		BatchSize:    500,
		PollInterval: 50 * time.Millisecond,
		Logger:       testLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	relayCtx, stopRelay := context.WithCancel(context.Background())
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		_ = r.Run(relayCtx)
	}()
	defer func() {
		stopRelay()
		<-relayDone
	}()
	next := 0
	enqueue := func() {
		var msgs []broker.Message
		for k := range keys {
			for i := range perKey {
				msgs = append(msgs, outboxtest.SeqMessage(topic, "k"+strconv.Itoa(k), next+i))
			}
		}
		next += perKey
		if err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error { return h.store.Enqueue(ctx, tx, msgs...) }); err != nil {
			t.Errorf("enqueue: %v", err)
		}
	}
	enqueue()
	outage(enqueue)
	want := next * keys
	deadline := time.Now().Add(3 * time.Minute)
	for tally.Distinct() < want {
		if time.Now().After(deadline) {
			t.Fatalf("drain after the outage: %d of %d messages delivered", tally.Distinct(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	perKeyWant := map[string]int{}
	for k := range keys {
		perKeyWant["k"+strconv.Itoa(k)] = next
	}
	tally.CheckOrder(t, perKeyWant)
	parked, err := h.store.Parked(ctx, outbox.ParkedQuery{})
	if err != nil || len(parked) != 0 {
		t.Errorf("the outage parked %d rows (%v)", len(parked), err)
	}
	t.Logf("%d failed publish calls during the outage; %d duplicate deliveries", failures.Load(), tally.Duplicates())
	if failures.Load() == 0 {
		t.Errorf("no publish failed: the outage was not observed")
	}
	if n := unmarked.Load(); n > 0 {
		t.Errorf("%d of %d failed publish calls did not wrap broker.ErrUnavailable", n, failures.Load())
	}
}

type publisherFunc func(ctx context.Context, msgs ...broker.Message) error

func (f publisherFunc) Publish(ctx context.Context, msgs ...broker.Message) error {
	return f(ctx, msgs...)
}

// TestKafkaOutage: the cluster refuses every produce request (closing the
// connection) for a while.
func TestKafkaOutage(t *testing.T) {
	t.Parallel()
	c := testenv.KafkaCluster(t)
	var down atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if down.Load() {
			return nil, errors.New("outboxtest: broker down"), true
		}
		return nil, nil, false
	})
	brokerOutage(t, kafkaBrokerAt(t, c.ListenAddrs()), func(enqueue func()) {
		down.Store(true)
		enqueue()
		time.Sleep(3 * time.Second) // several publish timeouts
		down.Store(false)
	})
}

// TestRabbitMQRestart: the node restarts (every connection dropped) while
// messages are being enqueued.
func TestRabbitMQRestart(t *testing.T) {
	t.Parallel()
	url, restart := testenv.PrivateRabbitMQ(t)
	brokerOutage(t, rabbitBrokerAt(t, url), func(enqueue func()) {
		done := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			done <- restart(ctx)
		}()
		for {
			time.Sleep(300 * time.Millisecond)
			enqueue()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("restart: %v", err)
				}
				return
			default:
			}
		}
	})
}

// testLogger logs to stderr when STEADFAST_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("STEADFAST_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
