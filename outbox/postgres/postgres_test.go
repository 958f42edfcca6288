package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// harness is an outbox on a fresh schema: every store it opens has its own
// pool, tagged with an application_name so Crash can kill its sessions.
type harness struct {
	url   string
	cfg   postgres.Config
	pool  *pgxpool.Pool
	store *postgres.Store
	mu    sync.Mutex
	apps  map[outbox.Store]string
}

func newHarness(t testing.TB, cfg postgres.Config) *harness {
	t.Helper()
	pool, url, schema := testenv.PostgresDB(t)
	if pool == nil {
		return nil
	}
	if cfg.Channel == "" {
		cfg.Channel = schema // channels are server-wide: keep tests apart
	}
	h := &harness{url: url, cfg: cfg, pool: pool, apps: map[outbox.Store]string{}}
	h.store = h.open(t)
	if err := h.store.Migrate(context.Background()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return h
}

// open returns a store on the harness's table with a pool of its own.
func (h *harness) open(t testing.TB) *postgres.Store {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(h.url)
	if err != nil {
		t.Fatal(err)
	}
	app := testenv.Name(t, "relay")
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	pcfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s, err := postgres.New(pool, h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.apps[s] = app
	h.mu.Unlock()
	return s
}

// crash terminates every session of s's pool.
func (h *harness) crash(ctx context.Context, s outbox.Store) error {
	h.mu.Lock()
	app := h.apps[s]
	h.mu.Unlock()
	if app == "" {
		return fmt.Errorf("unknown store")
	}
	_, err := h.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, app)
	return err
}

type pgTx struct {
	tx    pgx.Tx
	store *postgres.Store
}

func (x pgTx) Enqueue(ctx context.Context, msgs ...broker.Message) error {
	return x.store.Enqueue(ctx, x.tx, msgs...)
}
func (x pgTx) Commit(ctx context.Context) error   { return x.tx.Commit(ctx) }
func (x pgTx) Rollback(ctx context.Context) error { return x.tx.Rollback(ctx) }

func (h *harness) harness(t *testing.T) outboxtest.Harness {
	return outboxtest.Harness{
		Store: h.store,
		Enqueue: func(ctx context.Context, msgs ...broker.Message) error {
			return pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error { return h.store.Enqueue(ctx, tx, msgs...) })
		},
		Begin: func(ctx context.Context) (outboxtest.Tx, error) {
			tx, err := h.pool.Begin(ctx)
			return pgTx{tx: tx, store: h.store}, err
		},
		Open:  func(t *testing.T) outbox.Store { return h.open(t) },
		Crash: h.crash,
		Corrupt: func(ctx context.Context, kind outboxtest.Corruption, key string) error {
			topic, headers := "corrupt", `{"seq": "1"}`
			switch kind {
			case outboxtest.EmptyTopic:
				topic = ""
			case outboxtest.BadHeaders:
				headers = `{"seq": 1}`
			}
			_, err := h.pool.Exec(ctx, `INSERT INTO `+h.store.Table()+` (message_id, topic, key, headers, message_time)
				VALUES (gen_random_uuid()::text, $1, $2, $3::jsonb, now())`, topic, key, headers)
			return err
		},
	}
}

func factory(cfg postgres.Config) outboxtest.Factory {
	return func(t *testing.T) outboxtest.Harness {
		h := newHarness(t, cfg)
		if h == nil {
			return outboxtest.Harness{}
		}
		return h.harness(t)
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	outboxtest.Run(t, factory(postgres.Config{}), outboxtest.Options{})
}
