package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestConformance runs the broker conformance suite. Every case gets its own
// publisher and subscriber connections on the shared node, except the
// broker-restart case, which gets a private node it can restart without
// disturbing the tests of other packages.
func TestConformance(t *testing.T) {
	brokertest.Run(t, brokertest.Features{
		ConsumerGroups: true,
		Persistent:     true,
		PerKeyOrder:    true,
		ExactlyOnce:    true,
		Restartable:    true,
		Limits:         brokertest.Limits{MaxNameBytes: rabbitmq.MaxNameBytes, UTF8Topic: true, MaxHeaders: rabbitmq.MaxHeaders - 2},
	}, func(t *testing.T) brokertest.Backend {
		var (
			url     string
			restart func(context.Context) error
		)
		if brokertest.RestartCase(t) {
			url, restart = testenv.PrivateRabbitMQ(t)
		} else {
			url = testenv.RabbitMQURL(t)
		}
		clean := newCleaner(t, url)
		pub, err := rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			sub.Close()
			pub.Close()
		})
		return brokertest.Backend{
			Publisher:  pub,
			Subscriber: sub,
			Setup: func(ctx context.Context, topic string, groups ...string) error {
				topo, err := sub.Topology(topic, groups...)
				if err != nil {
					return err
				}
				clean.add(topo)
				return sub.Setup(ctx, topic, groups...)
			},
			Restart: restart,
			Inject:  rawInjector(t, url),
		}
	})
}

// rawInjector publishes with a plain amqp091 channel, as a foreign
// producer would: messages the adapter's publisher never sends.
func rawInjector(t *testing.T, url string) func(ctx context.Context, topic, key string, payload []byte, kind brokertest.Injection) error {
	return func(ctx context.Context, topic, key string, payload []byte, kind brokertest.Injection) error {
		ch := raw(t, url)
		if err := ch.Confirm(false); err != nil {
			return err
		}
		confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1))
		p := amqp.Publishing{Body: payload, MessageId: fmt.Sprint("raw-", kind), Timestamp: time.Now()}
		switch kind {
		case brokertest.InjectMissingID:
			p.MessageId = ""
		case brokertest.InjectForgedAttempt:
			p.Headers = amqp.Table{
				"x-death": []any{amqp.Table{"count": int64(math.MaxInt64), "reason": "rejected", "queue": topic,
					"exchange": "victim", "routing-keys": []any{"victim-key"}}},
				"x-delivery-count": int64(math.MaxInt64),
			}
		case brokertest.InjectUndecodable:
			p.Headers = make(amqp.Table, rabbitmq.MaxHeaders+1)
			for i := range rabbitmq.MaxHeaders + 1 {
				p.Headers[fmt.Sprint("h", i)] = ""
			}
		default:
			return errors.ErrUnsupported
		}
		if err := ch.PublishWithContext(ctx, topic, key, true, false, p); err != nil {
			return err
		}
		select {
		case c := <-confirms:
			if !c.Ack {
				return fmt.Errorf("raw publish of %v not confirmed", kind)
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
