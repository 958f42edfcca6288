package postgres_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// benchParallelism x GOMAXPROCS goroutines process messages at once, each
// with its own pool connection.
const benchParallelism = 4

// BenchmarkClaimInTx measures processing one message whose effect is one
// INSERT, deduplicated on Postgres, against the raw work without
// deduplication:
//
//   - raw: BEGIN; INSERT effect; COMMIT.
//   - raw-claim: what deduplication costs written by hand, without the
//     in-progress check: BEGIN; INSERT key ON CONFLICT DO NOTHING
//     RETURNING; INSERT effect; COMMIT.
//   - steadfast: Store.Handler: BEGIN; claim (one statement); INSERT
//     effect; COMMIT.
//   - steadfast-wait: the same with Config.Wait 1s (the claim sets and
//     restores lock_timeout around its wait: two statements, one round
//     trip).
//   - middleware: the generic consumer middleware on the Postgres store,
//     with the effect in its own transaction (claim transaction held open
//     around it): what a handler that cannot share the transaction pays.
func BenchmarkClaimInTx(b *testing.B) {
	pool := benchPool(b)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (id text PRIMARY KEY, payload bytea NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, ""); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 100)
	insert := func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
		_, err := tx.Exec(ctx, `INSERT INTO effects (id, payload) VALUES ($1, $2)`, d.ID, d.Payload)
		return err
	}
	var seq atomic.Int64
	run := func(b *testing.B, h broker.Handler) {
		// Start every measurement from empty tables, whatever ran before.
		if _, err := pool.Exec(ctx, `TRUNCATE effects; TRUNCATE steadfast_idempotency`); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		b.SetParallelism(benchParallelism)
		b.ResetTimer()
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				d := broker.Delivery{Message: broker.Message{ID: "m-" + strconv.FormatInt(seq.Add(1), 10), Topic: "orders", Payload: payload},
					Group: "billing", Partition: -1, Offset: -1, Attempt: 1}
				if err := h(ctx, d); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	}

	b.Run("raw", func(b *testing.B) {
		run(b, func(ctx context.Context, d broker.Delivery) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return insert(ctx, tx, d) })
		})
	})
	b.Run("raw-claim", func(b *testing.B) {
		run(b, func(ctx context.Context, d broker.Delivery) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var claimed bool
				err := tx.QueryRow(ctx, `INSERT INTO steadfast_idempotency (scope, key) VALUES ($1, $2)
					ON CONFLICT DO NOTHING RETURNING true`, d.Group, d.ID).Scan(&claimed)
				if err != nil {
					return err
				}
				return insert(ctx, tx, d)
			})
		})
	})
	b.Run("steadfast", func(b *testing.B) {
		s := newStore(b, pool, postgres.Config{})
		run(b, handler(b, s, idempotency.ConsumerConfig{}, insert))
	})
	b.Run("steadfast-wait", func(b *testing.B) {
		s := newStore(b, pool, postgres.Config{Wait: time.Second})
		run(b, handler(b, s, idempotency.ConsumerConfig{}, insert))
	})
	b.Run("middleware", func(b *testing.B) {
		s := newStore(b, pool, postgres.Config{})
		mw, err := idempotency.Consumer(s, idempotency.ConsumerConfig{})
		if err != nil {
			b.Fatal(err)
		}
		run(b, mw(func(ctx context.Context, d broker.Delivery) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return insert(ctx, tx, d) })
		}))
	})
}

// benchPool opens a pool with one connection per benchmark goroutine (two
// for the middleware variant, which holds a claim and an effect
// transaction at once).
func benchPool(b *testing.B) *pgxpool.Pool {
	b.Helper()
	_, url, _ := testenv.PostgresDB(b)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = int32(2 * benchParallelism * runtime.GOMAXPROCS(0))
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}
