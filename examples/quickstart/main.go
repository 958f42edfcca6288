// Command quickstart publishes a few order events and consumes them with two
// consumer groups through the broker interface. It needs no infrastructure:
// by default it runs on the in-process memory broker.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// backend picks the broker: Kafka when STEADFAST_KAFKA_BROKERS is set,
// RabbitMQ when STEADFAST_RABBITMQ_URL is set, else the in-process memory
// broker. It prepares topic and groups so the first publish has somewhere to
// go: a Kafka topic, or a RabbitMQ exchange with one queue per group.
func backend(ctx context.Context, out io.Writer, topic string, groups ...string) (broker.Publisher, broker.Subscriber, func(), error) {
	if seeds := os.Getenv("STEADFAST_KAFKA_BROKERS"); seeds != "" {
		cfg := kafka.Config{Brokers: kafka.ParseBrokers(seeds), ClientID: "quickstart"}
		admin, err := kafka.NewAdmin(cfg)
		if err != nil {
			return nil, nil, nil, err
		}
		defer admin.Close()
		if err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: topic, Partitions: 3}); err != nil && !errors.Is(err, kafka.ErrTopicExists) {
			return nil, nil, nil, err
		}
		pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
		if err != nil {
			return nil, nil, nil, err
		}
		sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg})
		if err != nil {
			pub.Close()
			return nil, nil, nil, err
		}
		fmt.Fprintf(out, "backend: kafka (%s)\n", seeds)
		return pub, sub, func() { sub.Close(); pub.Close() }, nil
	}
	if url := os.Getenv("STEADFAST_RABBITMQ_URL"); url != "" {
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url, Name: "quickstart"})
		if err != nil {
			return nil, nil, nil, err
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
		if err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
		if err == nil {
			err = sub.Setup(ctx, topic, groups...)
		}
		if err != nil {
			pub.Close()
			conn.Close()
			return nil, nil, nil, err
		}
		fmt.Fprintln(out, "backend: rabbitmq")
		return pub, sub, func() {
			sub.Close()
			pub.Close()
			// Remove this run's exchange and queues.
			if topo, err := sub.Topology(topic, groups...); err == nil {
				_ = conn.Delete(context.WithoutCancel(ctx), topo)
			}
			conn.Close()
		}, nil
	}
	b := brokermem.New(brokermem.Config{})
	fmt.Fprintln(out, "backend: memory (in-process; set STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL for a real broker)")
	return b, b, func() { b.Close() }, nil
}

func run(ctx context.Context, out io.Writer) error {
	id := broker.NewID()
	topic := "quickstart.orders." + id[len(id)-8:]
	groups := []string{"billing", "shipping"}
	pub, sub, closeBackend, err := backend(ctx, out, topic, groups...)
	if err != nil {
		return err
	}
	defer closeBackend()

	orders := []struct{ customer, event string }{
		{"alice", "order-1 created"}, {"bob", "order-2 created"},
		{"alice", "order-1 paid"}, {"alice", "order-1 shipped"}, {"bob", "order-2 paid"},
	}
	var msgs []broker.Message
	for _, o := range orders {
		m := broker.NewMessage(topic, []byte(o.event))
		m.Key = o.customer // per-key order: alice's events arrive in this order
		m.Headers = map[string]string{broker.HeaderType: "order.event"}
		msgs = append(msgs, m)
	}
	if err := pub.Publish(ctx, msgs...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	fmt.Fprintf(out, "published %d events to %s\n", len(msgs), topic)

	var (
		mu      sync.Mutex
		lines   []string
		failed  bool
		pending sync.WaitGroup
	)
	pending.Add(len(groups) * len(msgs))
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, len(groups))
	for _, group := range groups {
		go func() {
			errs <- sub.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: group},
				func(_ context.Context, d broker.Delivery) error {
					mu.Lock()
					defer mu.Unlock()
					// Fail billing's first attempt at bob's payment once to show
					// redelivery: the broker hands it back with attempt 2.
					if group == "billing" && strings.HasSuffix(string(d.Payload), "paid") && d.Key == "bob" && !failed {
						failed = true
						lines = append(lines, fmt.Sprintf("%-8s %-5s %-18s attempt %d -> error, will be redelivered", group, d.Key, d.Payload, d.Attempt))
						return errors.New("payment service unavailable")
					}
					lines = append(lines, fmt.Sprintf("%-8s %-5s %-18s attempt %d -> ok", group, d.Key, d.Payload, d.Attempt))
					pending.Done()
					return nil
				})
		}()
	}
	done := make(chan struct{})
	go func() { pending.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-errs:
		return fmt.Errorf("subscribe: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("waiting for deliveries: %w", ctx.Err())
	}
	stop()
	for range groups {
		if err := <-errs; err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	// Handlers of different keys and groups run in parallel; sort per group
	// and key to show that each key kept its order.
	sort.SliceStable(lines, func(i, j int) bool { return lines[i][:14] < lines[j][:14] })
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
	fmt.Fprintf(out, "every group received all %d events once, each customer's in order\n", len(msgs))
	return nil
}
