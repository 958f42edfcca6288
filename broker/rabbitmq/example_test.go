package rabbitmq_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
)

// Example connects to the broker named by STEADFAST_RABBITMQ_URL, declares
// a group, publishes a message and consumes it.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Separate connections keep publisher flow control away from consumer
	// acks.
	pubConn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: os.Getenv("STEADFAST_RABBITMQ_URL"), Name: "orders-api"})
	if err != nil {
		log.Fatal(err)
	}
	defer pubConn.Close()
	subConn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: os.Getenv("STEADFAST_RABBITMQ_URL"), Name: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer subConn.Close()

	// One Groups value, shared by the publishing and the consuming side,
	// says how topics and groups map to exchanges and queues.
	groups := rabbitmq.Groups{Retry: &rabbitmq.RetryChain{Delays: []time.Duration{time.Second, 10 * time.Second}}}

	// The publishing side declares the exchange "orders" and the queue
	// "orders.billing" (with its retry chain) before it publishes, so
	// nothing it sends before the consumers first run is unroutable. A
	// message that still is comes back as an error matching ErrUnroutable,
	// and the publisher logs a WARN naming the exchange and routing key no
	// queue is bound for.
	if err := groups.Declare(ctx, pubConn, "orders", "billing"); err != nil {
		log.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer pub.Close()
	sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{Groups: groups})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	m := broker.NewMessage("orders", []byte(`{"id":42}`))
	m.Key = "order-42"
	if err := pub.Publish(ctx, m); err != nil {
		log.Fatal(err)
	}

	sctx, stop := context.WithCancel(ctx)
	err = sub.Subscribe(sctx, broker.Subscription{Topic: "orders", Group: "billing"}, func(_ context.Context, d broker.Delivery) error {
		fmt.Printf("%s %s attempt %d\n", d.Key, d.Payload, d.Attempt)
		stop()
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// ExampleRetryChain_Topology shows what a retry chain declares around a
// queue.
func ExampleRetryChain_Topology() {
	chain := rabbitmq.RetryChain{Delays: []time.Duration{5 * time.Second, 30 * time.Second, 5 * time.Minute}}
	t, err := chain.Topology(rabbitmq.Queue{Name: "orders.billing"})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range t.Exchanges {
		fmt.Printf("exchange %s (%s)\n", e.Name, e.Kind)
	}
	for _, q := range t.Queues {
		fmt.Printf("queue %s ttl=%v dlx=%q dlrk=%q\n", q.Name, q.MessageTTL, q.DeadLetterExchange, q.DeadLetterRoutingKey)
	}
	for _, b := range t.Bindings {
		fmt.Printf("bind %s -> %s [%s]\n", b.Exchange, b.Queue, b.Key)
	}
	fmt.Println("attempts before parking:", chain.MaxAttempts())
	// Output:
	// exchange orders.billing.retry.first (fanout)
	// exchange orders.billing.retry (direct)
	// exchange orders.billing.return (fanout)
	// queue orders.billing ttl=0s dlx="orders.billing.retry" dlrk=""
	// queue orders.billing.retry.1 ttl=5s dlx="orders.billing.return" dlrk="steadfast.retry.2"
	// queue orders.billing.retry.2 ttl=30s dlx="orders.billing.return" dlrk="steadfast.retry.3"
	// queue orders.billing.retry.3 ttl=5m0s dlx="orders.billing.return" dlrk="steadfast.parking"
	// queue orders.billing.parking ttl=0s dlx="" dlrk=""
	// bind orders.billing.return -> orders.billing []
	// bind orders.billing.retry.first -> orders.billing.retry.1 []
	// bind orders.billing.retry -> orders.billing.retry.2 [steadfast.retry.2]
	// bind orders.billing.retry -> orders.billing.retry.3 [steadfast.retry.3]
	// bind orders.billing.retry -> orders.billing.parking [steadfast.parking]
	// attempts before parking: 4
}

// ExampleGroups_Topology shows how topics and groups map to exchanges and
// queues.
func ExampleGroups_Topology() {
	t, err := rabbitmq.Groups{}.Topology("orders", "billing", "shipping")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("exchange %s (%s)\n", t.Exchanges[0].Name, t.Exchanges[0].Kind)
	for i, q := range t.Queues {
		fmt.Printf("queue %s single-active-consumer=%v bound with %q\n", q.Name, q.SingleActiveConsumer, t.Bindings[i].Key)
	}
	// Output:
	// exchange orders (topic)
	// queue orders.billing single-active-consumer=true bound with "#"
	// queue orders.shipping single-active-consumer=true bound with "#"
}
