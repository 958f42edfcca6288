package postgres_test

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// A consumer whose effect (a row in payments) and deduplication commit in
// one transaction: a crash before the commit reprocesses the message, a
// crash after it skips the redelivery. Here the producer sent the order
// twice; it is paid once. (The Example runs on the PostgreSQL of
// STEADFAST_POSTGRES_URL, as the tests do.)
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool := testenv.ExamplePostgres() // your *pgxpool.Pool

	store, err := idempg.New(pool, idempg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE payments (order_id text, amount int)`); err != nil {
		log.Fatal(err)
	}
	handle, err := store.Handler(idempotency.ConsumerConfig{
		Consumer:    "payments",
		OnDuplicate: func(_ context.Context, d broker.Delivery) { fmt.Printf("%s: duplicate, skipped\n", d.Payload) },
	}, func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
		_, err := tx.Exec(ctx, `INSERT INTO payments (order_id, amount) VALUES ($1, 100)`, string(d.Payload))
		fmt.Printf("%s: paid\n", d.Payload)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	b := brokermem.New(brokermem.Config{}) // or Kafka, RabbitMQ
	defer b.Close()
	m := broker.NewMessage("orders", []byte("order-7"))
	m.Key = "order-7"
	for range 2 {
		if err := b.Publish(ctx, m); err != nil { // the same message ID twice
			log.Fatal(err)
		}
	}
	deliveries := 0
	stopAfterTwo := func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			if deliveries++; deliveries == 2 {
				defer cancel()
			}
			return next(ctx, d)
		}
	}
	err = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "payments"}, broker.Chain(handle, stopAfterTwo))
	if err != nil {
		log.Fatal(err)
	}
	var payments int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM payments`).Scan(&payments); err != nil {
		log.Fatal(err)
	}
	fmt.Println("payments:", payments)
	// Output:
	// order-7: paid
	// order-7: duplicate, skipped
	// payments: 1
}

// Claim inside a transaction you run yourself: the invoice and the claim
// commit together, so the second attempt finds the work done.
func ExampleStore_Claim() {
	ctx := context.Background()
	pool := testenv.ExamplePostgres() // your *pgxpool.Pool
	store, err := idempg.New(pool, idempg.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE invoices (order_id text PRIMARY KEY)`); err != nil {
		log.Fatal(err)
	}

	for attempt := 1; attempt <= 2; attempt++ {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			first, err := store.Claim(ctx, tx, "invoicing", "order-42")
			if err != nil {
				return err // ErrInProgress: another transaction holds it; retry later
			}
			if !first {
				fmt.Printf("attempt %d: already invoiced\n", attempt)
				return nil
			}
			_, err = tx.Exec(ctx, `INSERT INTO invoices (order_id) VALUES ('order-42')`)
			fmt.Printf("attempt %d: invoiced\n", attempt)
			return err
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// attempt 1: invoiced
	// attempt 2: already invoiced
}
