package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
)

// BenchmarkProject projects 20,000 events (97 players) from the event
// store's global log into a PostgreSQL read model, 1,000 events per
// transaction with the checkpoint, each round into a new version's
// tables; raw does the same by hand with bare pgx: read the events table
// in pages, decode, upsert the same rows, no checkpoint, no fence.
func BenchmarkProject(b *testing.B) {
	const n, batch = 20_000, 1000
	e := newEnv(b)
	ctx := context.Background()
	copyEvents(b, e.pool, n)
	if _, err := e.pool.Exec(ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
	version := 0
	b.Run("steadfast", func(b *testing.B) {
		start := time.Now()
		for range b.N {
			version++
			id := cqrs.ID{Name: "bench", Version: version}
			if err := e.prepare(ctx, id); err != nil {
				b.Fatal(err)
			}
			p, err := cqrs.NewProjector(e.store, e.events, cqrstest.Registry(), cqrs.Projection[postgres.Tx]{ID: id,
				Handle: func(ctx context.Context, tx postgres.Tx, bt *cqrs.Batch) error {
					return writer{tx, "bench"}.AddScores(ctx, points(bt), int64(len(bt.Events)))
				}}, cqrs.Config{BatchSize: batch, Logger: discard, ProgressInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- p.Run(rctx) }()
			for {
				st, err := e.store.State(ctx, id)
				if err == nil && st.Events >= n {
					break
				}
				time.Sleep(time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
	})
	b.Run("raw", func(b *testing.B) {
		start := time.Now()
		for range b.N {
			version++
			id := cqrs.ID{Name: "bench", Version: version}
			if err := e.prepare(ctx, id); err != nil {
				b.Fatal(err)
			}
			scores, _ := postgres.VersionTable("bench_scores", version)
			counts, _ := postgres.VersionTable("bench_counts", version)
			q := fmt.Sprintf(addScores, scores, counts)
			var last int64
			for {
				rows, err := e.pool.Query(ctx, `SELECT position, data FROM events WHERE position > $1 ORDER BY position LIMIT $2`, last, batch)
				if err != nil {
					b.Fatal(err)
				}
				pts := map[string]int64{}
				k := 0
				for rows.Next() {
					var data []byte
					if err := rows.Scan(&last, &data); err != nil {
						b.Fatal(err)
					}
					var s cqrstest.ScoreAdded
					if err := json.Unmarshal(data, &s); err != nil {
						b.Fatal(err)
					}
					pts[s.Player] += s.Points
					k++
				}
				if rows.Err() != nil {
					b.Fatal(rows.Err())
				}
				if k == 0 {
					break
				}
				players, ps := make([]string, 0, len(pts)), make([]int64, 0, len(pts))
				for p, v := range pts {
					players, ps = append(players, p), append(ps, v)
				}
				if err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, q, players, ps, int64(k))
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
	})
}
