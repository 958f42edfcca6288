package rabbitdlq_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// BenchmarkConsume measures what the retry and dead-letter layer costs on
// top of the rabbitmq adapter: one member handles b.N pre-published 1 KB
// persistent messages (1000 keys, concurrency 16) from a durable queue on
// the local node.
//
//   - raw: the rabbitmq adapter's Subscriber with a plain handler (the
//     adapter itself is compared with raw amqp091 in broker/rabbitmq's
//     benchmarks).
//   - steadfast: the rabbitdlq Consumer (dlq.RetryInProcess), every message
//     succeeding.
//   - steadfast-1pct-dead: the same with 1% of the messages failing
//     permanently, each dead-lettered (one confirmed publish each).
//
// msgs/s counts from the first delivery.
func BenchmarkConsume(b *testing.B) {
	b.Run("1KB/raw", func(b *testing.B) { benchConsume(b, false, 0) })
	b.Run("1KB/steadfast", func(b *testing.B) { benchConsume(b, true, 0) })
	b.Run("1KB/steadfast-1pct-dead", func(b *testing.B) { benchConsume(b, true, 100) })
}

var errPoison = dlq.Permanent(errors.New("cannot decode"))

func benchConsume(b *testing.B, withDLQ bool, poisonEvery int) {
	b.StopTimer()
	url := testenv.RabbitMQURL(b)
	ctx := context.Background()
	conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	topic, group := testenv.Name(b, "bench"), "g"
	c, err := rabbitdlq.NewConsumer(rabbitdlq.Config{Conn: conn, Publisher: pub})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	topo, err := c.Topology(topic, group)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = conn.Delete(ctx, topo) }()
	if err := c.Setup(ctx, topic, group); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 1024)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for i := 0; i < b.N; i += 1000 {
		batch := make([]broker.Message, 0, 1000)
		for j := i; j < min(i+1000, b.N); j++ {
			m := broker.NewMessage(topic, payload)
			m.Key = fmt.Sprint("key-", j%1000)
			batch = append(batch, m)
		}
		if err := pub.Publish(ctx, batch...); err != nil {
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
	sub := broker.Subscription{Topic: topic, Group: group, Concurrency: 16}
	run := func(ctx context.Context) error { return c.Subscribe(ctx, sub, h) }
	if !withDLQ {
		s, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run = func(ctx context.Context) error { return s.Subscribe(ctx, sub, h) }
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.SetBytes(1024)
	b.StartTimer()
	go func() { done <- run(sctx) }()
	seen.Report(b)
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
