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
		{URL: "amqp://localhost/", Reconnect: broker.Backoff{Initial: time.Second, Max: time.Millisecond}},
		{URL: "amqp://localhost/", Reconnect: broker.Backoff{Initial: -time.Second}},
		{URL: "amqp://localhost/", DialTimeout: -time.Second},
		{URL: "amqp://localhost/", Heartbeat: -time.Second},
		{URL: "amqp://localhost/", CloseTimeout: -time.Second},
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

// TestCloseOnSilentConnection: Close, Publisher.Close and Subscriber.Close
// return promptly when the connection is up at the TCP level but the broker
// went silent, instead of waiting for its close-ok until missed heartbeats
// end the connection (1.5 × Heartbeat): they wait Config.CloseTimeout (1s by
// default) at most. What was built on the connection fails cleanly: a
// Publish whose confirm never came reports a failure matching
// broker.ErrClosed, never success, and Subscribe returns broker.ErrClosed.
func TestCloseOnSilentConnection(t *testing.T) {
	t.Parallel()
	const (
		heartbeat = 5 * time.Second // amqp091 waits up to 1.5× this for a silent broker
		bound     = 2 * time.Second // the default CloseTimeout of 1s, and a margin
	)
	// setup dials through a proxy, with a queue bound to an exchange, and a
	// group for subscriptions.
	setup := func(t *testing.T) (px *proxy, conn *rabbitmq.Conn, ex, q, topic string, sub *rabbitmq.Subscriber) {
		url := testenv.RabbitMQURL(t)
		px = newProxy(t, url)
		conn = dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: heartbeat})
		ex, q = boundQueue(t, url, conn, "k")
		sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
		if err != nil {
			t.Fatal(err)
		}
		topic = testenv.Name(t, "t")
		topo, err := sub.Topology(topic, "g")
		if err != nil {
			t.Fatal(err)
		}
		newCleaner(t, url).add(topo)
		if err := sub.Setup(ctxT(t), topic, "g"); err != nil {
			t.Fatal(err)
		}
		return px, conn, ex, q, topic, sub
	}
	// subscribe starts a subscription and waits until it handled a message.
	subscribe := func(t *testing.T, sub *rabbitmq.Subscriber, pub *rabbitmq.Publisher, topic string) *running {
		handled := make(chan struct{}, 1)
		r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error {
			select {
			case handled <- struct{}{}:
			default:
			}
			return nil
		})
		if err := pub.Publish(ctxT(t), broker.NewMessage(topic, nil)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-handled:
		case <-time.After(time.Minute):
			t.Fatal("the subscription handled nothing")
		}
		return r
	}
	// result waits for the result of a call running in the background,
	// which must come within bound.
	result := func(t *testing.T, what string, c <-chan error) error {
		t.Helper()
		select {
		case err := <-c:
			return err
		case <-time.After(bound):
			t.Fatalf("%s did not return within %v", what, bound)
			return nil
		}
	}

	t.Run("conn", func(t *testing.T) {
		// Close with a publisher, a subscription, and a Publish call in
		// flight whose message the broker enqueued but whose confirm was
		// held back before the connection went silent.
		t.Parallel()
		px, conn, ex, q, topic, sub := setup(t)
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1})
		if err != nil {
			t.Fatal(err)
		}
		r := subscribe(t, sub, pub, topic)
		msg := func() broker.Message { return keyed(ex) }
		// The exchange is known to exist after this: the call in flight
		// sends at once, without waiting for an answer hold keeps back.
		if err := pub.Publish(ctxT(t), msg()); err != nil {
			t.Fatal(err)
		}
		ch := raw(t, testenv.RabbitMQURL(t))
		base := queueDepth(t, ch, q)
		px.hold()
		published := make(chan error, 1)
		go func() { published <- pub.Publish(ctxT(t), msg()) }()
		waitFor(t, "the broker to enqueue a message whose confirm is held back", func() bool {
			return queueDepth(t, ch, q) > base
		})
		px.freeze()

		if err := timed(t, px, bound, "Conn.Close", conn.Close); err != nil {
			t.Errorf("Conn.Close = %v, want nil", err)
		}
		err = result(t, "the Publish in flight", published)
		t.Logf("the Publish in flight returned %v", err)
		var pe *broker.PublishError
		if !errors.As(err, &pe) || len(pe.Failures) != 1 || !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Publish in flight at Close = %v, want a *broker.PublishError for its message matching broker.ErrClosed", err)
		}
		if err := result(t, "Subscribe", r.done); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Subscribe after Close = %v, want broker.ErrClosed", err)
		}
	})

	t.Run("publisher", func(t *testing.T) {
		// Publisher.Close closes every channel of its pool on the silent
		// connection.
		t.Parallel()
		px, conn, ex, _, _, _ := setup(t)
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 3})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 { // one call per channel: all are open
			if err := pub.Publish(ctxT(t), keyed(ex)); err != nil {
				t.Fatal(err)
			}
		}
		px.freeze()
		if err := timed(t, px, bound, "Publisher.Close", pub.Close); err != nil {
			t.Errorf("Publisher.Close = %v, want nil", err)
		}
		if err := pub.Publish(ctxT(t), broker.NewMessage(ex, nil)); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Publish after Close = %v, want broker.ErrClosed", err)
		}
		if err := timed(t, px, bound, "Conn.Close", conn.Close); err != nil {
			t.Errorf("Conn.Close = %v, want nil", err)
		}
	})

	t.Run("subscriber", func(t *testing.T) {
		// A stopping subscription closes its channel on the silent
		// connection.
		t.Parallel()
		px, conn, _, _, topic, sub := setup(t)
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1})
		if err != nil {
			t.Fatal(err)
		}
		r := subscribe(t, sub, pub, topic)
		px.freeze()
		if err := timed(t, px, bound, "Subscriber.Close", sub.Close); err != nil {
			t.Errorf("Subscriber.Close = %v, want nil", err)
		}
		if err := result(t, "Subscribe", r.done); !errors.Is(err, broker.ErrClosed) {
			t.Errorf("Subscribe after Close = %v, want broker.ErrClosed", err)
		}
		if err := timed(t, px, bound, "Conn.Close", conn.Close); err != nil {
			t.Errorf("Conn.Close = %v, want nil", err)
		}
	})
}

// TestCloseOnMutedConnection: Close returns within CloseTimeout when the
// broker ignores the connection but keeps sending heartbeats. amqp091
// pushes the socket's read deadline back on every frame it reads, so its
// CloseDeadline alone waits until its own next heartbeat write fails on the
// deadline, up to a Heartbeat (10s here) later; Close closes the socket at
// the deadline. Without that, this test fails.
func TestCloseOnMutedConnection(t *testing.T) {
	t.Parallel()
	const (
		closeTimeout = 500 * time.Millisecond
		bound        = 3 * time.Second
	)
	px := newProxy(t, testenv.RabbitMQURL(t))
	conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: 10 * time.Second, CloseTimeout: closeTimeout})
	px.mute(t, 200*time.Millisecond)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- conn.Close() }()
	select {
	case err := <-done:
		took := time.Since(start)
		t.Logf("Close returned %v after %v", err, took)
		if err != nil {
			t.Errorf("Close: %v, want nil (the timeout is logged, not returned)", err)
		}
		if took < closeTimeout {
			t.Errorf("Close returned after %v, before CloseTimeout (%v): the muted broker cannot have answered", took, closeTimeout)
		}
	case <-time.After(bound):
		px.cut() // ends the heartbeats, and so the wait
		<-done
		t.Fatalf("Close did not return within %v of a broker that only sends heartbeats (it returned once the connection was cut, after %v)", bound, time.Since(start))
	}
}

// timed runs f, which must return within bound. If it does not, the test
// fails, and f is waited for up to a minute more (to report how long it
// takes), then the proxy's connections are cut to end it.
func timed(t *testing.T, px *proxy, bound time.Duration, what string, f func() error) error {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		t.Logf("%s returned %v after %v", what, err, time.Since(start))
		return err
	case <-time.After(bound):
	}
	select {
	case err := <-done:
		t.Errorf("%s returned %v after %v, want within %v", what, err, time.Since(start), bound)
		return err
	case <-time.After(time.Minute):
	}
	px.cut()
	err := <-done
	t.Errorf("%s did not return within a minute (the connections were then cut)", what)
	return err
}

// TestSilentFromTheStart: a connection whose broker goes silent right
// after the handshake, before sending any other frame, is found lost by
// missed heartbeats (1.5 × Heartbeat) and replaced, like one that goes
// silent later. amqp091 clears the socket's deadlines once the connection
// is open, possibly after its heartbeat check set the read deadline for
// the last handshake frame: without a frame after that, nothing would end
// the wait for one.
func TestSilentFromTheStart(t *testing.T) {
	t.Parallel()
	const heartbeat = 2 * time.Second
	url := testenv.RabbitMQURL(t)
	px := newProxy(t, url)
	ex, q := boundQueue(t, url, dial(t, url), "k")
	px.trap(true, connectionOpenOK) // the connection freezes once open-ok reached the client
	conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: heartbeat,
		Reconnect: testReconnect})
	px.untrap() // the next connection goes through
	if px.tripped.Load() != 1 {
		t.Fatalf("%d connections froze, want 1", px.tripped.Load())
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	m := keyed(ex)
	ctx, cancel := context.WithTimeout(context.Background(), 10*heartbeat)
	defer cancel()
	start := time.Now()
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatalf("Publish on a connection silent from the start: %v after %v, want the connection replaced and the message sent", err, time.Since(start))
	}
	t.Logf("published after %v (%d connections)", time.Since(start), px.accepted.Load())
	if n := queueDepth(t, raw(t, url), q); n != 1 {
		t.Errorf("queue holds %d messages, want 1", n)
	}
}
