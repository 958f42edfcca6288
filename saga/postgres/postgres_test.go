package postgres_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/postgres"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

var discard = slog.New(slog.DiscardHandler)

// openPool opens a pool on url with room for an engine, participants and
// a relay.
func openPool(t testing.TB, url string, conns int) *pgxpool.Pool {
	return openTracedPool(t, url, conns, nil)
}

// openTracedPool is openPool with a pgx tracer (nil: none).
func openTracedPool(t testing.TB, url string, conns int, tracer pgx.QueryTracer) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(conns)
	cfg.ConnConfig.Tracer = tracer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// env is one test's database: an outbox and the saga tables, migrated.
type env struct {
	url   string
	pool  *pgxpool.Pool
	out   *outboxpg.Store
	store *postgres.Store
	parts *postgres.Participants
	flows *postgres.Flows
}

func newEnv(t testing.TB, conns int) *env { return newTracedEnv(t, conns, nil) }

// newTracedEnv is newEnv with a pgx tracer on the pool.
func newTracedEnv(t testing.TB, conns int, tracer pgx.QueryTracer) *env {
	t.Helper()
	url := testenv.PostgresURL(t)
	e := &env{url: url, pool: openTracedPool(t, url, conns, tracer)}
	ctx := context.Background()
	var err error
	if e.out, err = outboxpg.New(e.pool, outboxpg.Config{Table: "outbox", Channel: testenv.Name(t, "outbox")}); err != nil {
		t.Fatal(err)
	}
	if err := e.out.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if e.store, err = postgres.New(e.pool, postgres.Config{Outbox: e.out, Channel: testenv.Name(t, "saga")}); err != nil {
		t.Fatal(err)
	}
	if e.parts, err = postgres.NewParticipants(e.pool, postgres.ParticipantsConfig{Outbox: e.out}); err != nil {
		t.Fatal(err)
	}
	if e.flows, err = postgres.NewFlows(e.pool, postgres.FlowsConfig{}); err != nil {
		t.Fatal(err)
	}
	for _, m := range []func(context.Context) error{e.store.Migrate, e.parts.Migrate, e.flows.Migrate} {
		if err := m(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// relay publishes the env's outbox through pub until the test ends.
func (e *env) relay(t testing.TB, pub broker.Publisher) {
	t.Helper()
	e.relayWith(t, pub, 0)
}

// relayWith is relay with the relay's WakeDelay.
func (e *env) relayWith(t testing.TB, pub broker.Publisher, wakeDelay time.Duration) {
	t.Helper()
	r, err := outbox.NewRelay(e.out, pub, outbox.Config{PollInterval: 50 * time.Millisecond, WakeDelay: wakeDelay,
		BatchSize: 500, Logger: discard, StatsInterval: -1, DeletePublished: true, PublishTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("relay: %v", err)
		}
	})
}

func stores(t *testing.T, pub broker.Publisher) sagatest.Stores {
	e := newEnv(t, 10)
	e.relay(t, pub)
	return sagatest.Stores{Store: e.store, Participants: e.parts, Flows: e.flows,
		Reopen: func(t *testing.T) saga.Store {
			s, err := postgres.New(openPool(t, e.url, 10), postgres.Config{Outbox: e.out, Channel: e.store.Channel()})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	sagatest.Run(t, sagatest.Features{Orders: 1000, Logger: discard}, stores, sagatest.MemoryBroker)
}

func TestOrderFlowRabbitMQ(t *testing.T) {
	t.Parallel()
	sagatest.RunOrderFlow(t, sagatest.Features{Orders: 1000, Logger: discard}, stores, rabbitBroker)
}

func TestOrderFlowKafka(t *testing.T) {
	t.Parallel()
	sagatest.RunOrderFlow(t, sagatest.Features{Orders: 1000, Logger: discard}, stores, kafkaBroker)
}

// kafkaBroker is a Kafka-protocol cluster (STEADFAST_KAFKA_BROKERS or an
// in-process kfake cluster per test); each topic gets 4 partitions.
func kafkaBroker(t *testing.T) sagatest.Broker { return kafkaBrokerAt(t, testenv.Kafka(t)) }

func kafkaBrokerAt(t testing.TB, seeds []string) sagatest.Broker {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: seeds}})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Config:            kafka.Config{Brokers: seeds},
		RetryBackoff:      broker.Backoff{Initial: 5 * time.Millisecond, Max: time.Second, Multiplier: 1.5, Jitter: -1},
		CommitInterval:    200 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		RebalanceTimeout:  20 * time.Second,
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
	var mu sync.Mutex
	created := map[string]bool{}
	return sagatest.Broker{Publisher: pub, Subscriber: sub,
		Setup: func(ctx context.Context, topic, _ string) error {
			mu.Lock()
			defer mu.Unlock()
			if created[topic] {
				return nil
			}
			if err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: topic, Partitions: 4}); err != nil &&
				!strings.Contains(err.Error(), "already exists") {
				return err
			}
			created[topic] = true
			return nil
		}}
}

// rabbitBroker is the shared RabbitMQ node; each case declares its own
// exchanges and queues, deleted at cleanup.
func rabbitBroker(t *testing.T) sagatest.Broker {
	url := testenv.RabbitMQURL(t)
	dial := func() *rabbitmq.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url, Name: t.Name(),
			Reconnect: broker.Backoff{Initial: 50 * time.Millisecond, Max: time.Second}})
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
	var mu sync.Mutex
	var topos []rabbitmq.Topology
	t.Cleanup(func() {
		sub.Close()
		pub.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url})
		if err != nil {
			t.Logf("cleanup: %v", err)
			return
		}
		defer c.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, topo := range topos {
			if err := c.Delete(ctx, topo); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	})
	return sagatest.Broker{Publisher: pub, Subscriber: sub,
		Setup: func(ctx context.Context, topic, group string) error {
			topo, err := sub.Topology(topic, group)
			if err != nil {
				return err
			}
			mu.Lock()
			topos = append(topos, topo)
			mu.Unlock()
			return sub.Setup(ctx, topic, group)
		}}
}
