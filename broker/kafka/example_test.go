package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
)

// Publish and consume through a cluster named by STEADFAST_KAFKA_BROKERS
// (for example "127.0.0.1:9092,127.0.0.1:9093"). It needs a running cluster,
// so it is compiled, not run.
func Example() {
	brokers := kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS"))
	cfg := kafka.Config{Brokers: brokers}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	admin, err := kafka.NewAdmin(cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer admin.Close()
	err = admin.CreateTopic(ctx, kafka.TopicSpec{Name: "orders", Partitions: 6, ReplicationFactor: 3})
	if err != nil && !errors.Is(err, kafka.ErrTopicExists) {
		log.Fatal(err)
	}

	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	m := broker.NewMessage("orders", []byte(`{"id":42}`))
	m.Key = "customer-7" // all of customer-7's orders stay in order
	if err := pub.Publish(ctx, m); err != nil {
		log.Fatal(err)
	}

	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	err = sub.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"},
		func(_ context.Context, d broker.Delivery) error {
			fmt.Printf("order %s from partition %d (attempt %d)\n", d.Payload, d.Partition, d.Attempt)
			return nil // commit; an error retries in place after a backoff
		})
	if err != nil {
		log.Fatal(err)
	}
}

// An exactly-once pipeline: every order produces an invoice, and the invoice
// and the order's offset commit in one transaction.
func ExamplePipeline() {
	brokers := kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS"))
	p, err := kafka.NewPipeline(kafka.PipelineConfig{
		Config:          kafka.Config{Brokers: brokers},
		TransactionalID: "invoicer-0", // stable per instance
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = p.Run(ctx, broker.Subscription{Topic: "orders", Group: "invoicer"},
		func(_ context.Context, d broker.Delivery) ([]broker.Message, error) {
			inv := broker.NewMessage("invoices", append([]byte("invoice for "), d.Payload...))
			inv.Key = d.Key
			inv.Headers = map[string]string{broker.HeaderCausationID: d.ID}
			return []broker.Message{inv}, nil
		})
	if err != nil {
		log.Fatal(err)
	}
}

// KeyPartition is the partition Kafka's Java client picks for a key.
func ExampleKeyPartition() {
	fmt.Println(kafka.KeyPartition("customer-7", 6))
	fmt.Println(kafka.KeyPartition("foobar", 10))
	// Output:
	// 1
	// 6
}
