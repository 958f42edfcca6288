package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/eventsource"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
)

// The DDL for a migration tool: the events table, its companions and the
// global log's index, all idempotent. Names are validated and quoted.
func ExampleSchema() {
	ddl, err := espg.Schema("billing.events")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(ddl, "\n") {
		if strings.HasPrefix(line, "CREATE") {
			fmt.Println(strings.TrimSuffix(line, " ("))
		}
	}
	_, err = espg.Schema("events; DROP TABLE users")
	fmt.Println(err != nil)
	// Output:
	// CREATE TABLE IF NOT EXISTS "billing"."events"
	// CREATE INDEX IF NOT EXISTS "events_log" ON "billing"."events" (transaction_id, position);
	// CREATE TABLE IF NOT EXISTS "billing"."events_snapshots"
	// CREATE TABLE IF NOT EXISTS "billing"."events_keys"
	// CREATE TABLE IF NOT EXISTS "billing"."events_archive"
	// true
}

// A command's events, a business row and the events' outbox messages
// commit together. It needs PostgreSQL, so it is not run.
func ExampleStore_In() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://localhost/shop")
	if err != nil {
		log.Fatal(err)
	}
	outbox, err := outboxpg.New(pool, outboxpg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	store, err := espg.New(pool, espg.Config{Table: "shop.events", Outbox: outbox})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	reg := eventsource.NewRegistry()
	type Shipped struct{ Carrier string }
	eventsource.Register[Shipped](reg, "order.shipped", 1)
	orders, err := eventsource.NewRepository(store, reg, eventsource.Decider[bool, string, any]{
		Decide: func(shipped bool, carrier string) ([]any, error) {
			if shipped {
				return nil, nil
			}
			return []any{Shipped{Carrier: carrier}}, nil
		},
		Evolve: func(bool, any) bool { return true },
	}, eventsource.RepositoryConfig[bool]{})
	if err != nil {
		log.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE shop.orders SET status = 'shipped' WHERE id = $1`, "order-7"); err != nil {
			return err
		}
		_, err := orders.With(store.In(tx)).Handle(ctx, "order-7", "ups")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
}
