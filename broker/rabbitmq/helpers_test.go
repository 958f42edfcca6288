package rabbitmq_test

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
)

// testLogger logs warnings and errors to stderr when STEADFAST_TEST_LOG is
// set, and discards otherwise.
func testLogger() *slog.Logger {
	if os.Getenv("STEADFAST_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testReconnect is the reconnect schedule of test connections: quick, and
// the default's shape (growing by half, up to half of each wait random).
var testReconnect = broker.Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Multiplier: 1.5, Jitter: 0.5}

// dial connects to url and closes the connection at cleanup.
func dial(t testing.TB, url string) *rabbitmq.Conn {
	t.Helper()
	return dialConfig(t, rabbitmq.Config{URL: url})
}

// dialConfig connects with cfg, whose Name, Logger and Reconnect default to
// the test's, and closes the connection at cleanup.
func dialConfig(t testing.TB, cfg rabbitmq.Config) *rabbitmq.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg.Name = cmp.Or(cfg.Name, t.Name())
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	cfg.Reconnect = cmp.Or(cfg.Reconnect, testReconnect)
	c, err := rabbitmq.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw opens a plain amqp091 channel for assertions, closed at cleanup.
func raw(t testing.TB, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("raw dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("raw channel: %v", err)
	}
	return ch
}

// cleaner deletes the topologies it is given at test cleanup, so tests on
// the shared node leave no durable queues behind.
type cleaner struct {
	mu    sync.Mutex
	topos []rabbitmq.Topology
}

func newCleaner(t testing.TB, url string) *cleaner {
	c := &cleaner{}
	t.Cleanup(func() {
		c.mu.Lock()
		topos := c.topos
		c.mu.Unlock()
		if len(topos) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url})
		if err != nil {
			t.Logf("cleanup: dial: %v", err)
			return
		}
		defer conn.Close()
		for _, topo := range topos {
			if err := conn.Delete(ctx, topo); err != nil {
				t.Logf("cleanup: %v", err)
			}
		}
	})
	return c
}

func (c *cleaner) add(topos ...rabbitmq.Topology) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.topos = append(c.topos, topos...)
}

// ctxT returns a context bounded by a generous liveness timeout.
func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// keyed returns a new message to topic without payload, with key "k": the
// binding key most tests give boundQueue.
func keyed(topic string) broker.Message {
	m := broker.NewMessage(topic, nil)
	m.Key = "k"
	return m
}
