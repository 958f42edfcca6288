package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

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

// diagnose describes the sessions of the harness's stores (with the
// transaction each has open and the outbox key locks it holds, by
// application_name) and the outbox's pending rows, for failure messages.
func (h *harness) diagnose(ctx context.Context) string {
	h.mu.Lock()
	apps := make([]string, 0, len(h.apps))
	for _, app := range h.apps {
		apps = append(apps, app)
	}
	h.mu.Unlock()
	var b strings.Builder
	rows, err := h.pool.Query(ctx, `SELECT a.pid, a.application_name, a.state, a.backend_start,
	    a.xact_start, a.state_change, coalesce(a.wait_event_type || ':' || a.wait_event, ''), left(a.query, 60),
	    (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'
	        AND l.classid = ($2::regclass::oid::int4)::oid)
	FROM pg_stat_activity a
	WHERE a.application_name = ANY($1) ORDER BY a.backend_start`, apps, h.store.Table())
	if err != nil {
		return fmt.Sprintf("sessions: %v\n", err)
	}
	for rows.Next() {
		var (
			pid                     int32
			app, state, wait, query string
			start                   time.Time
			xactStart, stateChange  *time.Time
			locks                   int64
		)
		if err := rows.Scan(&pid, &app, &state, &start, &xactStart, &stateChange, &wait, &query, &locks); err != nil {
			return fmt.Sprintf("sessions: %v\n", err)
		}
		fmt.Fprintf(&b, "session pid %d app %s state %q wait %q started %s xact_start %v state_change %v key locks %d query %q\n",
			pid, app, state, wait, start.Format(time.RFC3339Nano), xactStart, stateChange, locks, query)
	}
	if err := rows.Err(); err != nil {
		return fmt.Sprintf("sessions: %v\n", err)
	}
	var pending, due, blocked int64
	err = h.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE available_at <= now()),
	    count(*) FILTER (WHERE attempts > 0 AND available_at > now())
	    FROM `+h.store.Table()+` WHERE status = 'pending'`).Scan(&pending, &due, &blocked)
	if err != nil {
		return b.String() + fmt.Sprintf("pending rows: %v\n", err)
	}
	fmt.Fprintf(&b, "pending rows: %d, due %d, waiting for a retry %d\n", pending, due, blocked)
	return b.String()
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
		Open:     func(t *testing.T) outbox.Store { return h.open(t) },
		Crash:    h.crash,
		Diagnose: h.diagnose,
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
