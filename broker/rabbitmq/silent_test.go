package rabbitmq_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Calls with a ctx on a connection whose broker went silent: amqp091's
// synchronous methods (opening a channel, confirm.select, declarations,
// basic.qos, basic.consume) take no context, and on a connection up at the
// TCP level only missed heartbeats would end them, 1.5 × Heartbeat later
// (15s here). The calls below must return soon after their ctx ends.
const (
	silentHeartbeat = 10 * time.Second
	silentTimeout   = time.Second     // the ctx of the calls under test
	silentBound     = 2 * time.Second // silentTimeout and a margin
)

// TestPublishOnSilentConnection: a Publish call that has to check an
// exchange, open a channel of its pool, or put that channel in confirm mode
// returns when its ctx ends, with a *broker.PublishError whose failures
// match context.DeadlineExceeded: nothing is reported sent. Once the
// connection is replaced, Publish works again and the messages reach the
// queue.
func TestPublishOnSilentConnection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// confirm: connections freeze once confirm.select went through,
		// instead of when the test freezes them.
		confirm bool
		// known: a Publish call before the freeze makes the exchange known
		// and opens one channel of a pool of two; the call under test gets
		// the other one, which it must open.
		known bool
	}{
		{name: "check-exchange"},
		{name: "open-channel", known: true},
		{name: "confirm", confirm: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := testenv.RabbitMQURL(t)
			px := newProxy(t, url)
			if tc.confirm {
				px.trap(true, confirmSelect)
			}
			conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: silentHeartbeat})
			// Declared on another connection: the publisher does not know
			// the exchange.
			ex, q := boundQueue(t, url, dial(t, url), "k")
			pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 2})
			if err != nil {
				t.Fatal(err)
			}
			msg := func() broker.Message { return keyed(ex) }
			sent := 0
			if tc.known {
				if err := pub.Publish(ctxT(t), msg()); err != nil {
					t.Fatal(err)
				}
				sent++
			}
			if !tc.confirm {
				px.freeze()
			}

			ctx, cancel := context.WithTimeout(context.Background(), silentTimeout)
			defer cancel()
			err = timed(t, px, silentBound, "Publish", func() error { return pub.Publish(ctx, msg()) })
			var pe *broker.PublishError
			if !errors.As(err, &pe) || len(pe.Failures) != 1 || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Publish on a silent connection = %v, want a *broker.PublishError for its message matching context.DeadlineExceeded", err)
			}
			if tc.confirm && px.tripped.Load() == 0 {
				t.Error("the connection did not freeze at confirm.select")
			}

			// A new connection: everything works again.
			px.untrap()
			px.cut()
			for range 2 { // both channels of the pool
				if err := pub.Publish(ctxT(t), msg()); err != nil {
					t.Fatalf("Publish after the reconnect: %v", err)
				}
				sent++
			}
			if n := queueDepth(t, raw(t, url), q); n != sent {
				t.Errorf("queue holds %d messages, want %d", n, sent)
			}
			if err := pub.Close(); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestSubscriberOnSilentConnection: Subscriber.Setup, and Subscribe while
// it declares its topology or starts consuming, return when their ctx ends.
// Once the connection is replaced, they work again and nothing is lost.
func TestSubscriberOnSilentConnection(t *testing.T) {
	t.Parallel()
	// setup dials through a proxy (set with trap when not nil) and returns
	// a subscriber on it, a topic and, on another connection, a publisher.
	setup := func(t *testing.T, trap *method) (px *proxy, sub *rabbitmq.Subscriber, topic string, pub *rabbitmq.Publisher) {
		url := testenv.RabbitMQURL(t)
		px = newProxy(t, url)
		if trap != nil {
			px.trap(true, *trap)
		}
		conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: silentHeartbeat})
		sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Close() })
		topic = testenv.Name(t, "t")
		topo, err := sub.Topology(topic, "g")
		if err != nil {
			t.Fatal(err)
		}
		newCleaner(t, url).add(topo)
		pub, err = rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return px, sub, topic, pub
	}
	short := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), silentTimeout)
		t.Cleanup(cancel)
		return ctx
	}
	// handles subscribes to topic and waits until the message with id is
	// handled.
	handles := func(t *testing.T, sub *rabbitmq.Subscriber, topic, id string) {
		t.Helper()
		got := make(chan struct{}, 1)
		r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
			if d.Message.ID == id {
				select {
				case got <- struct{}{}:
				default:
				}
			}
			return nil
		})
		select {
		case <-got:
		case err := <-r.done:
			t.Fatalf("Subscribe returned %v", err)
		case <-time.After(time.Minute):
			t.Fatal("the message was not handled")
		}
		if err := r.stop(t); err != nil {
			t.Errorf("Subscribe = %v", err)
		}
	}

	// worksAgain checks, after the reconnect, that Setup works and that a
	// message published to topic is handled.
	worksAgain := func(t *testing.T, sub *rabbitmq.Subscriber, topic string, pub *rabbitmq.Publisher) {
		t.Helper()
		if err := sub.Setup(ctxT(t), topic, "g"); err != nil {
			t.Fatalf("Setup after the reconnect: %v", err)
		}
		m := broker.NewMessage(topic, nil)
		if err := pub.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
		handles(t, sub, topic, m.ID)
	}

	t.Run("setup", func(t *testing.T) {
		// Setup on its own, then behind another Setup call that holds the
		// declarations (its ctx lasts minutes).
		t.Parallel()
		px, sub, topic, pub := setup(t, nil)
		px.freeze()
		err := timed(t, px, silentBound, "Setup", func() error { return sub.Setup(short(t), topic, "g") })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Setup on a silent connection = %v, want context.DeadlineExceeded", err)
		}
		long := make(chan error, 1)
		go func() { long <- sub.Setup(ctxT(t), topic, "g") }()
		time.Sleep(200 * time.Millisecond) // for it to be waiting for the broker
		err = timed(t, px, silentBound, "Setup behind another", func() error { return sub.Setup(short(t), topic, "g") })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Setup behind another on a silent connection = %v, want context.DeadlineExceeded", err)
		}

		px.cut()
		select {
		case err := <-long:
			if err != nil {
				t.Errorf("the long Setup = %v after the reconnect, want nil", err)
			}
		case <-time.After(time.Minute):
			t.Fatal("the long Setup did not return after the reconnect")
		}
		worksAgain(t, sub, topic, pub)
	})

	t.Run("subscribe-declare", func(t *testing.T) {
		// Subscribe's ctx ends while it declares the group's topology: it
		// returns nil, as when its ctx ends at any time.
		t.Parallel()
		px, sub, topic, pub := setup(t, nil)
		px.freeze()
		err := timed(t, px, silentBound, "Subscribe", func() error {
			return sub.Subscribe(short(t), broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
		})
		if err != nil {
			t.Errorf("Subscribe on a silent connection = %v, want nil (its ctx ended)", err)
		}
		px.cut()
		worksAgain(t, sub, topic, pub)
	})

	t.Run("subscribe-consume", func(t *testing.T) {
		// The connection goes silent once basic.consume went through; the
		// Subscribe call is cancelled meanwhile. The message waiting in the
		// queue is handled by the next Subscribe call.
		t.Parallel()
		px, sub, topic, pub := setup(t, &basicConsume)
		if err := sub.Setup(ctxT(t), topic, "g"); err != nil {
			t.Fatal(err)
		}
		m := broker.NewMessage(topic, nil)
		if err := pub.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
		r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
		waitFor(t, "basic.consume to freeze the connection", func() bool { return px.tripped.Load() > 0 })
		time.Sleep(100 * time.Millisecond) // for Subscribe to be waiting for consume-ok
		err := timed(t, px, silentBound, "Subscribe after cancel", func() error {
			r.cancel()
			return <-r.done
		})
		if err != nil {
			t.Errorf("cancelled Subscribe = %v, want nil", err)
		}
		px.untrap()
		px.cut()
		handles(t, sub, topic, m.ID)
	})
}

// TestAbandonedChannelIsClosed: a channel whose opening a Publish call
// gave up on (its ctx ended while the broker's channel.open-ok was held
// back) is closed once the answer comes, not leaked nor handed out.
func TestAbandonedChannelIsClosed(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	px := newProxy(t, url)
	conn := dialConfig(t, rabbitmq.Config{URL: px.url, Heartbeat: silentHeartbeat})
	ex, q := boundQueue(t, url, dial(t, url), "k") // unknown to the publisher
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	msg := func() broker.Message { return keyed(ex) }
	px.hold()
	ctx, cancel := context.WithTimeout(context.Background(), silentTimeout)
	defer cancel()
	err = timed(t, px, silentBound, "Publish", func() error { return pub.Publish(ctx, msg()) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Publish with the broker's answers held back = %v, want context.DeadlineExceeded", err)
	}
	if n := px.sentCount(channelOpen); n != 1 {
		t.Fatalf("%d channels opened, want 1", n)
	}
	px.up() // the answers come: the channel opens, and is closed
	waitFor(t, "the late channel to be closed", func() bool { return px.sentCount(channelClose) == 1 })

	if err := pub.Publish(ctxT(t), msg()); err != nil {
		t.Fatalf("Publish after the hold: %v", err)
	}
	if n := queueDepth(t, raw(t, url), q); n != 1 {
		t.Errorf("queue holds %d messages, want 1", n)
	}
	// The exchange check's channel and the pool's: the late channel was
	// not handed out.
	if opened, closed := px.sentCount(channelOpen), px.sentCount(channelClose); opened != 3 || closed != 2 {
		t.Errorf("%d channels opened and %d closed, want 3 and 2", opened, closed)
	}
}
