package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// env is a test's schema with the event store and the projection store.
type env struct {
	pool   *pgxpool.Pool
	url    string
	store  *postgres.Store
	events *espg.Store
}

func newEnv(t testing.TB) *env {
	t.Helper()
	_, url, _ := testenv.PostgresDB(t)
	ctx := context.Background()
	// Each projector holds a connection for its lease and one listening
	// for new events; the cases run several.
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	events, err := espg.New(pool, espg.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (name text NOT NULL, event_id text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return &env{pool: pool, url: url, store: store, events: events}
}

// prepare creates version id's read model: scores (a row per player) and
// score_counts (the number of events).
func (e *env) prepare(ctx context.Context, id cqrs.ID) error {
	scores, err := postgres.VersionTable(id.Name+"_scores", id.Version)
	if err != nil {
		return err
	}
	counts, _ := postgres.VersionTable(id.Name+"_counts", id.Version)
	_, err = e.pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (player text PRIMARY KEY, points bigint NOT NULL);
CREATE TABLE IF NOT EXISTS %s (id int PRIMARY KEY, n bigint NOT NULL)`, scores, counts))
	return err
}

type writer struct {
	tx   postgres.Tx
	name string
}

const addScores = `WITH s AS (
  INSERT INTO %[1]s (player, points) SELECT * FROM unnest($1::text[], $2::bigint[])
  ON CONFLICT (player) DO UPDATE SET points = %[1]s.points + excluded.points)
INSERT INTO %[2]s (id, n) VALUES (1, $3) ON CONFLICT (id) DO UPDATE SET n = %[2]s.n + excluded.n`

func (w writer) AddScores(ctx context.Context, points map[string]int64, n int64) error {
	players, pts := make([]string, 0, len(points)), make([]int64, 0, len(points))
	for k, v := range points {
		players, pts = append(players, k), append(pts, v)
	}
	_, err := w.tx.Exec(ctx, fmt.Sprintf(addScores, w.tx.Table(w.name+"_scores"), w.tx.Table(w.name+"_counts")), players, pts, n)
	return err
}

func (w writer) Effect(ctx context.Context, ids []string) error {
	_, err := w.tx.Exec(ctx, `INSERT INTO effects (name, event_id) SELECT $1, unnest($2::text[])`, w.tx.Projection().Name, ids)
	return err
}

func (e *env) read(ctx context.Context, scores, counts string) (cqrstest.Model, error) {
	m := cqrstest.Model{Scores: map[string]int64{}}
	rows, err := e.pool.Query(ctx, fmt.Sprintf(`SELECT player, points, (SELECT coalesce(sum(n), 0) FROM %s) FROM %s
UNION ALL SELECT NULL, NULL, (SELECT coalesce(sum(n), 0) FROM %s) WHERE NOT EXISTS (SELECT FROM %s)`, counts, scores, counts, scores))
	if err != nil {
		return m, err
	}
	defer rows.Close()
	for rows.Next() {
		var p *string
		var pts *int64
		if err := rows.Scan(&p, &pts, &m.Events); err != nil {
			return m, err
		}
		if p != nil {
			m.Scores[*p] = *pts
		}
	}
	return m, rows.Err()
}

func (e *env) backend(t *testing.T) cqrstest.Backend[postgres.Tx] {
	return cqrstest.Backend[postgres.Tx]{
		Store:   e.store,
		Events:  e.events,
		Writer:  func(tx postgres.Tx, b *cqrs.Batch) cqrstest.Writer { return writer{tx, b.Projection.Name} },
		Prepare: e.prepare,
		Read: func(ctx context.Context, id cqrs.ID) (cqrstest.Model, error) {
			s, _ := postgres.VersionTable(id.Name+"_scores", id.Version)
			c, _ := postgres.VersionTable(id.Name+"_counts", id.Version)
			return e.read(ctx, s, c)
		},
		ReadActive: func(ctx context.Context, name string) (cqrstest.Model, error) {
			return e.read(ctx, name+"_scores", name+"_counts")
		},
		Effects: func(ctx context.Context, name string) ([]string, error) {
			rows, err := e.pool.Query(ctx, `SELECT event_id FROM effects WHERE name = $1`, name)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			var out []string
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					return nil, err
				}
				out = append(out, id)
			}
			return out, rows.Err()
		},
		Views: func(name string) []string { return []string{name + "_scores", name + "_counts"} },
	}
}

// kill ends the session holding id's lease, as the death of its process
// would.
func (e *env) kill(t *testing.T, id cqrs.ID) {
	k1, k2 := e.store.LockKeys(id)
	var n int
	err := e.pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
WHERE locktype = 'advisory' AND classid::bigint = ($1::bigint & 4294967295) AND objid::bigint = ($2::bigint & 4294967295) AND objsubid = 2 AND granted`,
		k1, k2).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminate the lease holder of %s: %d sessions, %v", id, n, err)
	}
}

// TestConformance runs the suite; its takeover case terminates the lease
// holder's session on the server, as when its process dies.
func TestConformance(t *testing.T) {
	t.Parallel()
	cqrstest.Run(t, cqrstest.Features{Timeout: 2 * time.Minute, CrashPoints: []string{"cqrs/postgres.commit"}}, func(t *testing.T) cqrstest.Backend[postgres.Tx] {
		e := newEnv(t)
		b := e.backend(t)
		b.Kill = e.kill
		return b
	})
}
