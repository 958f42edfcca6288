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

// TestCloseWhileReconnecting: Close returns at once, and dials nothing,
// whatever the reconnecting supervisor is doing when it is called: waiting
// between refused dials (refused), in a dial whose handshake the broker
// does not answer (silent-handshake, where the dial alone would wait for
// DialTimeout), or declaring the topology again on a new connection that
// went silent (silent-redeclare, where only missed heartbeats would tell).
func TestCloseWhileReconnecting(t *testing.T) {
	t.Parallel()
	const bound = 5 * time.Second
	for _, tc := range []struct {
		name    string
		declare bool            // the Conn has a topology to declare again
		fail    func(px *proxy) // makes the next connections fail
		// stuck reports that the supervisor is where the case wants it;
		// a0 counts the dials made before fail.
		stuck func(px *proxy, a0 int64) bool
		// Dials the supervisor may start while Close runs: a dial under way
		// when Close is called may reach the proxy after it.
		maxDials int64
	}{
		{"refused", false, func(px *proxy) { px.down() }, func(px *proxy, a0 int64) bool {
			return px.accepted.Load() >= a0+2 // a dial failed, and another
		}, 1},
		{"silent-handshake", false, func(px *proxy) {
			px.trap(true, connectionStart)
			px.cut()
		}, func(px *proxy, _ int64) bool { return px.tripped.Load() > 0 }, 0},
		{"silent-redeclare", true, func(px *proxy) {
			px.trap(true, exchangeDeclare, queueDeclare, queueBind)
			px.cut()
		}, func(px *proxy, _ int64) bool { return px.tripped.Load() > 0 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := testenv.RabbitMQURL(t)
			px := newProxy(t, url)
			// Long enough for a stuck handshake or re-declaration to
			// outlast the bound by far.
			conn := dialConfig(t, rabbitmq.Config{URL: px.url, DialTimeout: 30 * time.Second, Heartbeat: 10 * time.Second})
			if tc.declare {
				topo := rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: testenv.Name(t, "q"), Transient: true}}}
				newCleaner(t, url).add(topo)
				if err := conn.Declare(ctxT(t), topo); err != nil {
					t.Fatal(err)
				}
			}
			a0 := px.accepted.Load()
			tc.fail(px)
			waitFor(t, "the supervisor to reconnect", func() bool { return tc.stuck(px, a0) })
			time.Sleep(100 * time.Millisecond) // well into the wait, handshake or re-declaration

			before := px.accepted.Load()
			start := time.Now()
			closed := make(chan error, 1)
			go func() { closed <- conn.Close() }()
			select {
			case err := <-closed:
				t.Logf("Close returned %v after %v", err, time.Since(start))
			case <-time.After(bound):
				t.Errorf("Close did not return within %v", bound)
				// Let the broker answer, so that Close can end.
				px.untrap()
				px.up()
				px.cut()
				select {
				case <-closed:
					t.Logf("Close returned after %v once the broker answered", time.Since(start))
				case <-time.After(time.Minute):
					t.Fatal("Close did not return")
				}
			}
			time.Sleep(100 * time.Millisecond) // for a dial under way to reach the proxy
			if n := px.accepted.Load() - before; n > tc.maxDials {
				t.Errorf("%d dials after Close was called, want at most %d", n, tc.maxDials)
			}
		})
	}
}
