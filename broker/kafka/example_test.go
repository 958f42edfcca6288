package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
)

// cluster starts an in-process Kafka-protocol cluster (franz-go's kfake)
// for the examples and returns its seed brokers. Against your cluster, use
// kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS")) instead.
func cluster() (brokers []string, stop func()) {
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation())
	if err != nil {
		log.Fatal(err)
	}
	return c.ListenAddrs(), c.Close
}

// Create a topic, publish an order and consume it in a consumer group.
// Here on an in-process cluster; any Kafka-protocol cluster works the same.
func Example() {
	brokers, stop := cluster() // or kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS"))
	defer stop()
	cfg := kafka.Config{Brokers: brokers}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
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
	consumed, stopConsuming := context.WithCancel(ctx)
	err = sub.Subscribe(consumed, broker.Subscription{Topic: "orders", Group: "billing"},
		func(_ context.Context, d broker.Delivery) error {
			fmt.Printf("order %s from partition %d (attempt %d)\n", d.Payload, d.Partition, d.Attempt)
			stopConsuming() // one is enough here; Subscribe returns after committing it
			return nil      // commit; an error retries in place after a backoff
		})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// order {"id":42} from partition 1 (attempt 1)
}

// An exactly-once pipeline: every order produces an invoice, and the invoice
// and the order's offset commit in one transaction. A consumer reading
// committed messages sees each invoice once.
func ExamplePipeline() {
	brokers, stop := cluster() // or kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS"))
	defer stop()
	cfg := kafka.Config{Brokers: brokers, AllowAutoTopicCreation: true}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	for _, id := range []string{"order-1", "order-2"} {
		m := broker.NewMessage("orders", []byte(id))
		m.Key = "customer-7"
		if err := pub.Publish(ctx, m); err != nil {
			log.Fatal(err)
		}
	}

	p, err := kafka.NewPipeline(kafka.PipelineConfig{
		Config:          cfg,
		TransactionalID: "invoicer-0", // stable per instance
	})
	if err != nil {
		log.Fatal(err)
	}
	running, stopPipeline := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- p.Run(running, broker.Subscription{Topic: "orders", Group: "invoicer"},
			func(_ context.Context, d broker.Delivery) ([]broker.Message, error) {
				inv := broker.NewMessage("invoices", append([]byte("invoice for "), d.Payload...))
				inv.Key = d.Key
				inv.Headers = map[string]string{broker.HeaderCausationID: d.ID}
				return []broker.Message{inv}, nil
			})
	}()

	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	read, stopReading := context.WithCancel(ctx)
	invoices := 0
	err = sub.Subscribe(read, broker.Subscription{Topic: "invoices", Group: "mailer"},
		func(_ context.Context, d broker.Delivery) error {
			fmt.Printf("%s\n", d.Payload)
			if invoices++; invoices == 2 {
				stopReading()
			}
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}
	stopPipeline()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output:
	// invoice for order-1
	// invoice for order-2
}

// KeyPartition is the partition Kafka's Java client picks for a key.
func ExampleKeyPartition() {
	fmt.Println(kafka.KeyPartition("customer-7", 6))
	fmt.Println(kafka.KeyPartition("foobar", 10))
	// Output:
	// 1
	// 6
}
