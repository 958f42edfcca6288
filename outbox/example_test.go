package outbox_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/outbox"
	outboxmem "github.com/steadfast-go/steadfast/outbox/memory"
)

// A service writes an order and its event in one transaction; a relay
// publishes the event; a consumer receives it. The memory outbox and the
// memory broker stand in for PostgreSQL (outbox/postgres: store.Enqueue(ctx,
// pgxTx, m) in your business transaction) and for Kafka or RabbitMQ
// (broker/kafka, broker/rabbitmq); nothing else changes.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := outboxmem.New(outboxmem.Config{})
	if err != nil {
		log.Fatal(err)
	}
	b := brokermem.New(brokermem.Config{})
	defer b.Close()

	// The business transaction: the order and its event commit together.
	orders := map[string]string{}
	err = store.BeginFunc(ctx, func(tx *outboxmem.Tx) error {
		m := broker.NewMessage("orders", []byte(`{"id":"order-1","status":"created"}`))
		m.Key = "order-1" // the events of one order are published in order
		if err := tx.Enqueue(ctx, m); err != nil {
			return err
		}
		orders["order-1"] = "created"
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	// The relay, in this process or any other: at least once, in per-key
	// order, across crashes.
	relay, err := outbox.NewRelay(store, b, outbox.Config{})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()

	got := make(chan string)
	go func() {
		_ = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"},
			func(_ context.Context, d broker.Delivery) error {
				got <- fmt.Sprintf("%s: %s", d.Key, d.Payload)
				return nil
			})
	}()
	fmt.Println(<-got)
	// Output:
	// order-1: {"id":"order-1","status":"created"}
}

// Parked rows are listed, fixed at the source, and redriven: the relay
// publishes them again.
func ExampleStore_redrive() {
	ctx := context.Background()
	store, _ := outboxmem.New(outboxmem.Config{})
	m := broker.NewMessage("orders", []byte("order-7 created"))
	m.Key = "order-7"
	_ = store.Enqueue(ctx, m)

	// A relay gave up on the row (here by hand, as a relay does after
	// Config.MaxAttempts failures).
	c, _ := store.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	_ = c.Complete(ctx, outbox.Outcome{Failed: []outbox.Failure{{ID: c.Records()[0].ID, Reason: "broker: topic does not exist", Park: true}}})

	parked, err := store.Parked(ctx, outbox.ParkedQuery{Limit: 100})
	if err != nil {
		log.Fatal(err)
	}
	var ids []int64
	for _, r := range parked {
		fmt.Printf("parked row %d (%s/%s) after %d attempt: %s\n", r.ID, r.Message.Topic, r.Message.Key, r.Attempts, r.LastError)
		ids = append(ids, r.ID)
	}
	n, err := store.Redrive(ctx, ids...)
	if err != nil {
		log.Fatal(err)
	}
	st, _ := store.Stats(ctx)
	fmt.Printf("redriven %d; pending %d, parked %d\n", n, st.Pending, st.Dead)
	// Output:
	// parked row 1 (orders/order-7) after 1 attempt: broker: topic does not exist
	// redriven 1; pending 1, parked 0
}
