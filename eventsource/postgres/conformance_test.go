package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/eventsource/eventsourcetest"
	"github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// pgStore keeps the pool a store was made with, for Begin.
type pgStore struct {
	*postgres.Store
	pool *pgxpool.Pool
}

// pgTx is a store bound to a transaction.
type pgTx struct {
	*postgres.Store
	tx pgx.Tx
}

func (t pgTx) Commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t pgTx) Rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

// newStore returns a migrated store on a fresh schema, with a channel of
// its own (channels are server-wide).
func newStore(t testing.TB, cfg postgres.Config) pgStore {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 32 // cases hold several transactions open at once
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if cfg.Channel == "" {
		cfg.Channel = testenv.Name(t, "es")
	}
	s, err := postgres.New(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return pgStore{s, pool}
}

func harness(cfg postgres.Config) eventsourcetest.Harness {
	return eventsourcetest.Harness{
		New: func(t testing.TB) eventsourcetest.Store { return newStore(t, cfg) },
		Begin: func(t testing.TB, st eventsourcetest.Store) (eventsourcetest.Tx, int) {
			s := st.(pgStore)
			tx, err := s.pool.Begin(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
			var pid int
			if err := tx.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			return pgTx{s.In(tx), tx}, pid
		},
		// Any transaction on the server holds the log back: other packages'
		// tests running at the same time may, for a while.
		Features: eventsourcetest.Features{Shredding: true, Timeout: 3 * time.Minute},
	}
}

func TestConformance(t *testing.T) {
	eventsourcetest.Run(t, harness(postgres.Config{}))
}

// TestConformanceEncrypted runs the suite with crypto-shredding on: every
// payload and snapshot sealed with its stream's key.
func TestConformanceEncrypted(t *testing.T) {
	eventsourcetest.Run(t, harness(postgres.Config{EncryptionKey: []byte("0123456789abcdef0123456789abcdef")}))
}
