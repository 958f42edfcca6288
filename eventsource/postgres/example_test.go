package postgres_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/eventsource"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
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
// commit together; handling the command again changes nothing. (The
// Example runs on the PostgreSQL of STEADFAST_POSTGRES_URL, as the tests
// do.)
func ExampleStore_In() {
	ctx := context.Background()
	pool := testenv.ExamplePostgres() // your *pgxpool.Pool
	outbox, err := outboxpg.New(pool, outboxpg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	store, err := espg.New(pool, espg.Config{Table: "events", Outbox: outbox})
	if err != nil {
		log.Fatal(err)
	}
	for _, migrate := range []func(context.Context) error{outbox.Migrate, store.Migrate} {
		if err := migrate(ctx); err != nil {
			log.Fatal(err)
		}
	}
	_, err = pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text);
		INSERT INTO orders VALUES ('order-7', 'paid')`)
	if err != nil {
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
	for range 2 {
		err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'shipped' WHERE id = $1`, "order-7"); err != nil {
				return err
			}
			res, err := orders.With(store.In(tx)).Handle(ctx, "order-7", "ups")
			fmt.Printf("version %d, %d new event(s)\n", res.Version, len(res.Events))
			return err
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	stats, err := outbox.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("outbox rows to publish:", stats.Pending)
	// Output:
	// version 1, 1 new event(s)
	// version 1, 0 new event(s)
	// outbox rows to publish: 1
}
