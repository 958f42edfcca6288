package outbox_test

import (
	"context"
	"log"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// A service writes an order and its event in one transaction; a relay
// publishes the event. The memory broker stands in for Kafka or RabbitMQ
// (broker/kafka, broker/rabbitmq). It needs PostgreSQL, so it is not run.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}

	// The business transaction: the order row and its event commit together.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, customer) VALUES ($1, $2)`, "order-1", "alice"); err != nil {
			return err
		}
		m := broker.NewMessage("orders", []byte(`{"id":"order-1","status":"created"}`))
		m.Key = "order-1" // the events of one order are published in order
		return store.Enqueue(ctx, tx, m)
	})
	if err != nil {
		log.Fatal(err)
	}

	// The relay, in this process or any other: at least once, in per-key
	// order, across crashes.
	pub := memory.New(memory.Config{})
	relay, err := outbox.NewRelay(store, pub, outbox.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := relay.Run(ctx); err != nil {
		log.Fatal(err)
	}
}

// Parked rows are listed, fixed at the source, and redriven.
func ExampleStore_redrive() {
	ctx := context.Background()
	var store outbox.Store // e.g. *postgres.Store
	parked, err := store.Parked(ctx, outbox.ParkedQuery{Limit: 100})
	if err != nil {
		log.Fatal(err)
	}
	var ids []int64
	for _, r := range parked {
		log.Printf("parked row %d (%s/%s): %s", r.ID, r.Message.Topic, r.Message.Key, r.LastError)
		ids = append(ids, r.ID)
	}
	if _, err := store.Redrive(ctx, ids...); err != nil {
		log.Fatal(err)
	}
}
