package kafkadlq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
)

// Orders are retried on retry topics ("orders.billing.retry.1" and
// ".retry.2", waiting 1s and 2s) without holding back the partition; a
// payload that does not decode is dead-lettered at once. It needs a Kafka
// cluster, so it is compiled but not run.
func ExampleNewConsumer() {
	ctx := context.Background()
	c, err := kafkadlq.NewConsumer(kafkadlq.Config{
		Subscriber: kafka.SubscriberConfig{Config: kafka.Config{Brokers: []string{"localhost:9092"}}},
		DLQ: dlq.Config{
			Retries: dlq.RetryTopics, // non-blocking: a failed order leaves its key's order
			Policy:  dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Second}},
			Name:    "billing.charge",
		},
		TopicSpec: kafka.TopicSpec{ReplicationFactor: 3},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	// Subscribe creates the retry and dead-letter topics that are missing.
	err = c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"}, func(ctx context.Context, d broker.Delivery) error {
		var order struct{ ID string }
		if err := json.Unmarshal(d.Payload, &order); err != nil {
			return dlq.Permanent(fmt.Errorf("decode order: %w", err))
		}
		return nil // charge the order; other errors are retried
	})
	if err != nil {
		log.Fatal(err)
	}
}

// An operator replays the dead letters of the last hour after a fix.
func ExampleInspector_Replay() {
	ctx := context.Background()
	in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{
		Config: kafka.Config{Brokers: []string{"localhost:9092"}},
		Topic:  "orders.billing.dlq",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	n, err := in.Replay(ctx, dlq.Filter{From: time.Now().Add(-time.Hour)}, dlq.ReplayOptions{})
	fmt.Println(n, err)
}
