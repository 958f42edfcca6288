package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
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
// together, or neither does. It needs PostgreSQL, so it is not run.
func ExampleStore_Enqueue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	store, err := outboxpg.New(pool, outboxpg.Config{Table: "shop.outbox"})
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
}
