package rabbitdlq_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
)

// Failed orders wait in the TTL/dead-letter-exchange retry chain (1s, 2s,
// 4s) so the queue keeps flowing; after the fourth failed attempt they go
// to "orders.billing.dlq" with their envelope. It needs a RabbitMQ node, so
// it is compiled but not run.
func ExampleNewConsumer() {
	ctx := context.Background()
	conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: "amqp://guest:guest@localhost:5672/"})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	policy := dlq.Policy{MaxAttempts: 4, Backoff: broker.Backoff{Initial: time.Second}}
	c, err := rabbitdlq.NewConsumer(rabbitdlq.Config{
		Conn:       conn,
		Subscriber: rabbitmq.SubscriberConfig{Groups: rabbitmq.Groups{Retry: rabbitdlq.RetryChain(policy)}},
		DLQ:        dlq.Config{Retries: dlq.RetryRedeliver, Policy: policy, Name: "billing.charge"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	err = c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"}, func(ctx context.Context, d broker.Delivery) error {
		return nil // charge the order
	})
	if err != nil {
		log.Fatal(err)
	}
}

// An operator lists the dead letters of a queue.
func ExampleInspector_List() {
	in, err := rabbitdlq.NewInspector(rabbitdlq.InspectorConfig{URL: "amqp://guest:guest@localhost:5672/", Queue: "orders.billing.dlq"})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	dls, err := in.List(context.Background(), dlq.Filter{Limit: 10})
	if err != nil {
		log.Fatal(err)
	}
	for _, dl := range dls {
		fmt.Println(dl.ID(), dl.Envelope.Attempts, dl.Envelope.Error)
	}
}
