package rabbitmq_test

import (
	"context"
	"testing"

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
		}
	})
}
