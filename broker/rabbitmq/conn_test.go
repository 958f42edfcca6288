package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func TestDialErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, cfg := range []rabbitmq.Config{
		{},
		{URL: "http://localhost/"},
		{URL: "amqp://localhost/", ReconnectMin: time.Second, ReconnectMax: time.Millisecond},
	} {
		if _, err := rabbitmq.Dial(ctx, cfg); !errors.Is(err, rabbitmq.ErrInvalidConfig) {
			t.Errorf("Dial(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}

	// Nothing listens: Dial retries until ctx ends.
	addr := testenv.ClosedAddr(t)
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := rabbitmq.Dial(cctx, rabbitmq.Config{URL: "amqp://guest:guest@" + addr + "/"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial to a closed port = %v, want DeadlineExceeded", err)
	}

	// Refused credentials fail at once, without waiting for ctx.
	u, err := url.Parse(testenv.RabbitMQURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("guest", "wrong")
	lctx, lcancel := context.WithTimeout(ctx, time.Minute)
	defer lcancel()
	_, err = rabbitmq.Dial(lctx, rabbitmq.Config{URL: u.String()})
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial with a wrong password = %v, want an immediate error", err)
	}
	t.Logf("wrong password: %v", err)
}

// TestClosedConn: everything built on a closed connection fails with
// broker.ErrClosed instead of waiting for a reconnect.
func TestClosedConn(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	conn := dial(t, url)
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	topic := testenv.Name(t, "t")
	if err := conn.Declare(ctx, rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: topic}}}); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Declare = %v", err)
	}
	if err := pub.Publish(ctx, broker.NewMessage(topic, nil)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Publish = %v", err)
	}
	if err := sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil }); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("Subscribe = %v", err)
	}
	if _, err := rabbitmq.NewPublisher(nil, rabbitmq.PublisherConfig{}); !errors.Is(err, rabbitmq.ErrInvalidConfig) {
		t.Errorf("NewPublisher(nil) = %v", err)
	}
}

// TestConnectionLostIsUnavailable: callers that only know the broker
// package (such as the outbox relay) see a lost connection as an outage.
func TestConnectionLostIsUnavailable(t *testing.T) {
	if !errors.Is(fmt.Errorf("publish: %w", rabbitmq.ErrConnectionLost), broker.ErrUnavailable) {
		t.Fatal("ErrConnectionLost does not wrap broker.ErrUnavailable")
	}
}
