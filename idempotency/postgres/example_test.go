package postgres_test

import (
	"context"
	"log"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
)

// A consumer whose effect (a row in payments) and deduplication commit in
// one transaction: a crash before the commit reprocesses the message, a
// crash after it skips the redelivery. Needs a database, so it only
// compiles here.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	store, err := idempg.New(pool, idempg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	handle, err := store.Handler(idempotency.ConsumerConfig{Consumer: "payments"},
		func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
			_, err := tx.Exec(ctx, `INSERT INTO payments (order_id, amount) VALUES ($1, 100)`, string(d.Payload))
			return err
		})
	if err != nil {
		log.Fatal(err)
	}
	var sub broker.Subscriber = brokermem.New(brokermem.Config{}) // or Kafka, RabbitMQ
	err = sub.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "payments"}, handle)
	if err != nil {
		log.Fatal(err)
	}
}

// Claim inside a transaction you run yourself.
func ExampleStore_Claim() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	store, _ := idempg.New(pool, idempg.Config{})

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		first, err := store.Claim(ctx, tx, "invoicing", "order-42")
		if err != nil || !first {
			return err // ErrInProgress: retry later; !first: already done
		}
		_, err = tx.Exec(ctx, `INSERT INTO invoices (order_id) VALUES ('order-42')`)
		return err
	})
	if err != nil {
		log.Print(err)
	}
}
