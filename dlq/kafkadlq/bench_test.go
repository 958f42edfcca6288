package kafkadlq_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// BenchmarkConsume measures what the retry and dead-letter layer costs on
// top of the kafka adapter: one group member handles b.N pre-published 1 KB
// keyed messages on 8 partitions, each variant on a fresh cluster.
//
//   - raw: the kafka adapter's Subscriber with a plain handler (the adapter
//     itself is compared with raw franz-go in broker/kafka's benchmarks).
//   - steadfast: the kafkadlq Consumer (dlq.RetryRedeliver) on the same
//     adapter, every message succeeding.
//   - steadfast-1pct-dead: the same with 1% of the messages failing
//     permanently, each dead-lettered (one acknowledged publish each).
//
// msgs/s counts from the first delivery, leaving out the group join.
func BenchmarkConsume(b *testing.B) {
	b.Run("1KB/raw", func(b *testing.B) {
		benchConsume(b, func(brokers []string, sub broker.Subscription, h broker.Handler) (func(context.Context) error, func()) {
			s, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: kafka.Config{Brokers: brokers}})
			if err != nil {
				b.Fatal(err)
			}
			return func(ctx context.Context) error { return s.Subscribe(ctx, sub, h) }, func() { _ = s.Close() }
		}, 0)
	})
	steadfast := func(poisonEvery int) func(b *testing.B) {
		return func(b *testing.B) {
			benchConsume(b, func(brokers []string, sub broker.Subscription, h broker.Handler) (func(context.Context) error, func()) {
				c, err := kafkadlq.NewConsumer(kafkadlq.Config{Subscriber: kafka.SubscriberConfig{Config: kafka.Config{Brokers: brokers}},
					DLQ: dlq.Config{Retries: dlq.RetryRedeliver}})
				if err != nil {
					b.Fatal(err)
				}
				if err := c.CreateTopics(context.Background(), sub.Topic, sub.Group, kafka.TopicSpec{}); err != nil {
					b.Fatal(err)
				}
				return func(ctx context.Context) error { return c.Subscribe(ctx, sub, h) }, func() { _ = c.Close() }
			}, poisonEvery)
		}
	}
	b.Run("1KB/steadfast", steadfast(0))
	b.Run("1KB/steadfast-1pct-dead", steadfast(100))
}

var errPoison = dlq.Permanent(errors.New("cannot decode"))

func benchConsume(b *testing.B, mk func([]string, broker.Subscription, broker.Handler) (func(context.Context) error, func()), poisonEvery int) {
	b.StopTimer()
	brokers := testenv.Kafka(b)
	admin, err := kafka.NewAdmin(kafka.Config{Brokers: brokers})
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	topic := testenv.Name(b, "bench")
	if err := admin.CreateTopic(context.Background(), kafka.TopicSpec{Name: topic, Partitions: 8}); err != nil {
		b.Fatal(err)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: brokers}})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	payload := make([]byte, 1024)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for i := 0; i < b.N; i += 500 {
		batch := make([]broker.Message, 0, 500)
		for j := i; j < min(i+500, b.N); j++ {
			m := broker.NewMessage(topic, payload)
			m.Key = fmt.Sprint("key-", j%1000)
			batch = append(batch, m)
		}
		if err := pub.Publish(context.Background(), batch...); err != nil {
			b.Fatal(err)
		}
	}
	seen := testenv.NewDeliveries(b.N)
	h := func(_ context.Context, d broker.Delivery) error {
		n := seen.Add()
		if poisonEvery > 0 && n%int64(poisonEvery) == 0 {
			return errPoison
		}
		return nil
	}
	run, closeFn := mk(brokers, broker.Subscription{Topic: topic, Group: testenv.Name(b, "g")}, h)
	defer closeFn()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.SetBytes(1024)
	b.StartTimer()
	go func() { done <- run(ctx) }()
	seen.Report(b)
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
