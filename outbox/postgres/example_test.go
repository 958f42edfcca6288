package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
)

// The DDL for a migration tool: a table and three partial indexes, all
// idempotent. Names are validated and quoted.
func ExampleSchema() {
	ddl, err := outboxpg.Schema("billing.outbox")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(ddl, "\n") {
		if strings.HasPrefix(line, "CREATE") {
			fmt.Println(strings.TrimSuffix(line, " ("))
		}
	}
	_, err = outboxpg.Schema("outbox; DROP TABLE users")
	fmt.Println(err != nil)
	// Output:
	// CREATE TABLE IF NOT EXISTS "billing"."outbox"
	// CREATE INDEX IF NOT EXISTS "outbox_pending" ON "billing"."outbox" (id) WHERE status = 'pending';
	// CREATE INDEX IF NOT EXISTS "outbox_blocking" ON "billing"."outbox" (key, id)
	// CREATE INDEX IF NOT EXISTS "outbox_published" ON "billing"."outbox" (published_at) WHERE status = 'published';
	// true
}

// Enqueue joins the business transaction: the order and its events commit
// together, or neither does. A relay then publishes them, here once, to the
// memory broker. (The Example runs on the PostgreSQL of
// STEADFAST_POSTGRES_URL, as the tests do.)
func ExampleStore_Enqueue() {
	ctx := context.Background()
	pool := testenv.ExamplePostgres() // your *pgxpool.Pool
	store, err := outboxpg.New(pool, outboxpg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	_, err = pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text);
		INSERT INTO orders VALUES ('order-7', 'new')`)
	if err != nil {
		log.Fatal(err)
	}

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1`, "order-7"); err != nil {
			return err
		}
		paid := broker.NewMessage("orders", []byte(`{"id":"order-7","status":"paid"}`))
		paid.Key = "order-7"
		paid.Headers = map[string]string{broker.HeaderType: "order.paid"}
		invoice := broker.NewMessage("invoices", []byte(`{"order":"order-7"}`))
		invoice.Key = "order-7"
		return store.Enqueue(ctx, tx, paid, invoice)
	})
	if err != nil {
		log.Fatal(err)
	}

	b := brokermem.New(brokermem.Config{}) // or Kafka, RabbitMQ
	defer b.Close()
	relay, err := outbox.NewRelay(store, b, outbox.Config{})
	if err != nil {
		log.Fatal(err)
	}
	n, err := relay.RunOnce(ctx) // a service runs relay.Run(ctx) instead
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("relayed:", n)
	for _, topic := range []string{"orders", "invoices"} {
		for _, m := range b.Published(topic) {
			fmt.Printf("%s %s %s\n", topic, m.Headers[broker.HeaderType], m.Payload)
		}
	}
	// Output:
	// relayed: 2
	// orders order.paid {"id":"order-7","status":"paid"}
	// invoices  {"order":"order-7"}
}
