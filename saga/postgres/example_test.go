package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// The DDL for a migration tool: the instances and history tables and their
// indexes, all idempotent. Names are validated and quoted.
func ExampleSchema() {
	ddl, err := sagapg.Schema("shop.saga")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(ddl, "\n") {
		if strings.HasPrefix(line, "CREATE") {
			fmt.Println(strings.TrimSuffix(line, " ("))
		}
	}
	_, err = sagapg.Schema("saga; DROP TABLE users")
	fmt.Println(err != nil)
	// Output:
	// CREATE TABLE IF NOT EXISTS "shop"."saga"
	// CREATE INDEX IF NOT EXISTS "saga_wake" ON "shop"."saga" (wake_at) WHERE wake_at IS NOT NULL;
	// CREATE INDEX IF NOT EXISTS "saga_open" ON "shop"."saga" (type, version, status)
	// CREATE INDEX IF NOT EXISTS "saga_ended" ON "shop"."saga" (ended_at) WHERE ended_at IS NOT NULL;
	// CREATE TABLE IF NOT EXISTS "shop"."saga_history"
	// CREATE UNIQUE INDEX IF NOT EXISTS "saga_history_message" ON "shop"."saga_history" (instance_id, message_id)
	// true
}

type order struct{ ID string }

// The wiring of a service that runs sagas on PostgreSQL and Kafka: the
// outbox the transitions write their commands to, a relay that publishes
// them, the saga store, and an engine consuming replies. Any number of
// processes can run the same. A local step writes business rows through
// the transition's own transaction with TxOf. It needs the servers, so it
// is not run.
func Example_wiring() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	out, _ := outboxpg.New(pool, outboxpg.Config{})
	store, _ := sagapg.New(pool, sagapg.Config{Outbox: out})
	for _, migrate := range []func(context.Context) error{out.Migrate, store.Migrate} {
		if err := migrate(ctx); err != nil {
			log.Fatal(err)
		}
	}
	pub, _ := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: []string{"localhost:9092"}}})
	sub, _ := kafka.NewSubscriber(kafka.SubscriberConfig{Config: kafka.Config{Brokers: []string{"localhost:9092"}}})
	relay, _ := outbox.NewRelay(out, pub, outbox.Config{})
	go func() { _ = relay.Run(ctx) }()

	def, _ := saga.Define("order", 1,
		saga.Step[order]{Name: "record-order", Action: func(ctx context.Context, tx saga.Tx, o *order) error {
			_, err := sagapg.TxOf(tx).Exec(ctx, `INSERT INTO orders (id, status) VALUES ($1, 'new')`, o.ID)
			return err
		}},
		// ... command steps to the participants
	)
	eng, _ := saga.NewEngine(store, saga.Config{Subscriber: sub})
	_ = eng.Register(def)
	go func() { _ = eng.Run(ctx) }()
	if _, err := saga.Start(ctx, eng, def, "order-7", order{ID: "order-7"}); err != nil {
		log.Fatal(err)
	}
}
