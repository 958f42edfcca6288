package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
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

// The wiring of a service that runs sagas on PostgreSQL: the outbox the
// transitions and the participants write their messages to, a relay that
// publishes them, the saga store, an engine consuming replies, and a
// participant whose action runs once per command. Any number of processes
// can run the same. A local step writes business rows through the
// transition's own transaction with TxOf. Here the broker is the memory
// broker; with Kafka or RabbitMQ nothing else changes. (The Example runs on
// the PostgreSQL of STEADFAST_POSTGRES_URL, as the tests do.)
func Example_wiring() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := testenv.ExamplePostgres() // your *pgxpool.Pool
	out, err := outboxpg.New(pool, outboxpg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	store, err := sagapg.New(pool, sagapg.Config{Outbox: out})
	if err != nil {
		log.Fatal(err)
	}
	parts, err := sagapg.NewParticipants(pool, sagapg.ParticipantsConfig{Outbox: out})
	if err != nil {
		log.Fatal(err)
	}
	for _, migrate := range []func(context.Context) error{out.Migrate, store.Migrate, parts.Migrate} {
		if err := migrate(ctx); err != nil {
			log.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text)`); err != nil {
		log.Fatal(err)
	}
	b := brokermem.New(brokermem.Config{}) // or kafka.NewPublisher and kafka.NewSubscriber
	defer b.Close()
	relay, err := outbox.NewRelay(out, b, outbox.Config{})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()

	def, err := saga.Define("order", 1,
		saga.Step[order]{Name: "record-order", Action: func(ctx context.Context, tx saga.Tx, o *order) error {
			_, err := sagapg.TxOf(tx).Exec(ctx, `INSERT INTO orders (id, status) VALUES ($1, 'new')`, o.ID)
			return err
		}},
		saga.Step[order]{Name: "reserve-inventory", Command: func(_ context.Context, o *order) (broker.Message, error) {
			return broker.Message{Topic: "inventory", Payload: []byte(o.ID)}, nil
		}},
	)
	if err != nil {
		log.Fatal(err)
	}
	eng, err := saga.NewEngine(store, saga.Config{Subscriber: b})
	if err != nil {
		log.Fatal(err)
	}
	if err := eng.Register(def); err != nil {
		log.Fatal(err)
	}
	go func() { _ = eng.Run(ctx) }()

	inventory, err := saga.NewParticipant(parts, saga.ParticipantConfig{Name: "inventory",
		Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
			fmt.Println("inventory reserved for", c.SagaID)
			return nil, nil
		}})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		_ = b.Subscribe(ctx, broker.Subscription{Topic: "inventory", Group: "inventory"}, inventory.Handle)
	}()

	if _, err := saga.Start(ctx, eng, def, "order-7", order{ID: "order-7"}); err != nil {
		log.Fatal(err)
	}
	in, err := store.Get(ctx, "order-7")
	for ; err == nil && !in.Status.Finished(); in, err = store.Get(ctx, "order-7") {
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		log.Fatal(err)
	}
	var status string
	if err := pool.QueryRow(ctx, `SELECT status FROM orders WHERE id = 'order-7'`).Scan(&status); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("saga %s, order row %s\n", in.Status, status)
	// Output:
	// inventory reserved for order-7
	// saga completed, order row new
}
