package redis_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/redis"
	"github.com/steadfast-go/steadfast/eventsource"
	esmemory "github.com/steadfast-go/steadfast/eventsource/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// BenchmarkProject projects 20,000 events (one leaderboard ZINCRBY and one
// entity-hash HINCRBY per event) from an in-process event log into Redis,
// 500 events per MULTI/EXEC with the checked checkpoint, each round into a
// new version's keys; raw reads the same log pages, decodes them and sends
// the same commands in one MULTI/EXEC per page with bare go-redis, with no
// checkpoint and no lease.
func BenchmarkProject(b *testing.B) {
	const n, batch = 20_000, 500
	rdb, prefix := testenv.Redis(b)
	ctx := context.Background()
	events := esmemory.New()
	reg := cqrstest.Registry()
	for i := 0; i < n; i += 500 {
		apps := make([]eventsource.StreamAppend, 500)
		for j := range apps {
			d, _ := reg.Encode(ctx, cqrstest.ScoreAdded{Player: fmt.Sprintf("p%d", (i+j)%97), Points: int64((i+j)%13 + 1)})
			apps[j] = eventsource.StreamAppend{StreamID: fmt.Sprintf("g-%d", i+j), Expected: eventsource.NoStream, Events: []eventsource.EventData{d}}
		}
		if _, err := events.Append(ctx, apps...); err != nil {
			b.Fatal(err)
		}
	}
	store, err := redis.New(rdb, redis.Config{Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}
	version := 0
	b.Run("steadfast", func(b *testing.B) {
		start := time.Now()
		for range b.N {
			version++
			id := cqrs.ID{Name: "bench", Version: version}
			p, err := cqrs.NewProjector(store, events, reg, cqrs.Projection[*redis.Tx]{ID: id,
				Handle: func(ctx context.Context, tx *redis.Tx, bt *cqrs.Batch) error {
					for _, e := range bt.Events {
						s := e.Event.(cqrstest.ScoreAdded)
						tx.ZIncrBy(ctx, "board", float64(s.Points), s.Player)
						tx.HIncrBy(ctx, "player:"+s.Player, "points", s.Points)
					}
					return nil
				}}, cqrs.Config{BatchSize: batch, Logger: slog.New(slog.DiscardHandler), ProgressInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			rctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- p.Run(rctx) }()
			for {
				st, err := store.State(ctx, id)
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
			kp := fmt.Sprintf("%sraw:v%d:", prefix, version)
			var pos eventsource.Position
			for {
				page, err := events.ReadLog(ctx, eventsource.LogQuery{After: pos, Limit: batch})
				if err != nil {
					b.Fatal(err)
				}
				if len(page.Records) == 0 {
					break
				}
				_, err = rdb.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
					for _, r := range page.Records {
						var s cqrstest.ScoreAdded
						if err := json.Unmarshal(r.Data, &s); err != nil {
							return err
						}
						pipe.ZIncrBy(ctx, kp+"board", float64(s.Points), s.Player)
						pipe.HIncrBy(ctx, kp+"player:"+s.Player, "points", s.Points)
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
				pos = page.Next
			}
		}
		b.ReportMetric(float64(n*b.N)/time.Since(start).Seconds(), "events/s")
	})
}
