// Command cqrs shows CQRS on steadfast: commands go through a typed bus to
// an event-sourced decider; two projections build read models from the
// event store's global log, exactly once: player totals in a table and a
// leaderboard in a sorted set; after each command the caller waits until
// the projections have passed the command's position (read-your-writes)
// before it queries them. Then a version 2 of the totals is rebuilt from
// history and swapped in while version 1 serves.
//
// With no infrastructure it runs on the in-process stores:
//
//	go run ./examples/cqrs
//
// With STEADFAST_POSTGRES_URL set, the events and the totals live in
// PostgreSQL; with STEADFAST_REDIS_URL set, the leaderboard lives in Redis
// (make services && . .services/env starts both locally). Each run uses
// tables and keys of its own and removes them at the end.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/cqrs"
	cqrsmem "github.com/steadfast-go/steadfast/cqrs/memory"
	cqrspg "github.com/steadfast-go/steadfast/cqrs/postgres"
	cqrsredis "github.com/steadfast-go/steadfast/cqrs/redis"
	"github.com/steadfast-go/steadfast/eventsource"
	esmem "github.com/steadfast-go/steadfast/eventsource/memory"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
)

// Score is the command: Points to Player.
type Score struct {
	Player string
	Points int64
}

// Validate refuses scores that are not positive.
func (s Score) Validate() error {
	if s.Player == "" || s.Points <= 0 {
		return fmt.Errorf("score: want a player and positive points")
	}
	return nil
}

// Scored is the event.
type Scored struct {
	Player string `json:"player"`
	Points int64  `json:"points"`
}

// Top is the query: the N best players.
type Top struct{ N int }

// Entry is a player and their points.
type Entry struct {
	Player string
	Points int64
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, os.Getenv("STEADFAST_POSTGRES_URL"), os.Getenv("STEADFAST_REDIS_URL")); err != nil {
		log.Fatal(err)
	}
}

// backends are the stores of one run, with what reads them.
type backends struct {
	events interface {
		eventsource.Store
		eventsource.LogReader
	}
	totals   func(ctx context.Context, version int) (map[string]int64, error) // the serving totals
	top      func(ctx context.Context, n int) ([]Entry, error)
	states   cqrs.StateReader
	boards   cqrs.StateReader
	runTotal func(ctx context.Context, version int) (*projector, error)
	runBoard func(ctx context.Context) (*projector, error)
	cleanup  []func()
}

type projector struct{ run func(context.Context) error }

var quiet = slog.New(slog.DiscardHandler)

func cfg(activate bool) cqrs.Config {
	return cqrs.Config{Activate: activate, PollInterval: 20 * time.Millisecond, TakeoverInterval: 50 * time.Millisecond, Logger: quiet}
}

func totalsHandler[T any](add func(ctx context.Context, tx T, player string, points int64) error) func(context.Context, T, *cqrs.Batch) error {
	return func(ctx context.Context, tx T, b *cqrs.Batch) error {
		for _, e := range b.Events {
			s := e.Event.(Scored)
			if err := add(ctx, tx, s.Player, s.Points); err != nil {
				return err
			}
		}
		return nil
	}
}

func setup(ctx context.Context, out io.Writer, pgURL, redisURL string, reg *eventsource.Registry) (*backends, error) {
	b := &backends{}
	run := broker.NewID()[24:]
	mem := cqrsmem.New()
	b.states, b.boards = mem, mem
	if pgURL == "" {
		fmt.Fprintln(out, "events and totals: in process (set STEADFAST_POSTGRES_URL for PostgreSQL)")
		b.events = esmem.New()
		b.totals = func(ctx context.Context, _ int) (map[string]int64, error) {
			v, _ := mem.ActiveVersion(ctx, "totals")
			m := map[string]int64{}
			for k, x := range mem.Table(cqrs.ID{Name: "totals", Version: v}, "totals") {
				m[k] = int64(x.(float64))
			}
			return m, nil
		}
		b.runTotal = func(ctx context.Context, version int) (*projector, error) {
			p, err := cqrs.NewProjector(mem, b.events, reg, cqrs.Projection[*cqrsmem.Tx]{ID: cqrs.ID{Name: "totals", Version: version},
				Handle: totalsHandler(func(_ context.Context, tx *cqrsmem.Tx, player string, points int64) error {
					tx.Add("totals", player, float64(points))
					return nil
				})}, cfg(true))
			if err != nil {
				return nil, err
			}
			return &projector{p.Run}, nil
		}
	} else {
		fmt.Fprintln(out, "events and totals: PostgreSQL")
		// Each projector on PostgreSQL holds a connection for its lease and
		// one listening for new events.
		pcfg, err := pgxpool.ParseConfig(pgURL)
		if err != nil {
			return nil, err
		}
		pcfg.MaxConns = 16
		pool, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return nil, err
		}
		b.cleanup = append(b.cleanup, pool.Close)
		es, err := espg.New(pool, espg.Config{Table: "example_cqrs_events_" + run})
		if err != nil {
			return nil, err
		}
		store, err := cqrspg.New(pool, cqrspg.Config{Table: "example_cqrs_checkpoints_" + run})
		if err != nil {
			return nil, err
		}
		if err := es.Migrate(ctx); err != nil {
			return nil, err
		}
		if err := store.Migrate(ctx); err != nil {
			return nil, err
		}
		view := "example_cqrs_totals_" + run
		b.cleanup = append(b.cleanup, func() {
			_, _ = pool.Exec(context.Background(), fmt.Sprintf(`DROP VIEW IF EXISTS %[1]s; DROP TABLE IF EXISTS %[1]s_v1, %[1]s_v2,
%[2]s, %[2]s_snapshots, %[2]s_keys, %[2]s_archive, %[3]s, %[3]s_names, %[3]s_skipped`, view, es.Table(), store.Table()))
		})
		b.events, b.states = es, store
		b.totals = func(ctx context.Context, _ int) (map[string]int64, error) {
			rows, err := pool.Query(ctx, `SELECT player, points FROM `+view)
			if err != nil {
				return nil, err
			}
			defer rows.Close()
			m := map[string]int64{}
			for rows.Next() {
				var p string
				var n int64
				if err := rows.Scan(&p, &n); err != nil {
					return nil, err
				}
				m[p] = n
			}
			return m, rows.Err()
		}
		b.runTotal = func(ctx context.Context, version int) (*projector, error) {
			table, err := cqrspg.VersionTable(view, version)
			if err != nil {
				return nil, err
			}
			if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (player text PRIMARY KEY, points bigint NOT NULL)`); err != nil {
				return nil, err
			}
			p, err := cqrs.NewProjector(store, es, reg, cqrs.Projection[cqrspg.Tx]{ID: cqrs.ID{Name: "totals", Version: version},
				Views: []string{view},
				Handle: totalsHandler(func(ctx context.Context, tx cqrspg.Tx, player string, points int64) error {
					_, err := tx.Exec(ctx, `INSERT INTO `+tx.Table(view)+` (player, points) VALUES ($1, $2)
ON CONFLICT (player) DO UPDATE SET points = excluded.points + `+tx.Table(view)+`.points`, player, points)
					return err
				})}, cfg(true))
			if err != nil {
				return nil, err
			}
			return &projector{p.Run}, nil
		}
	}
	if redisURL == "" {
		fmt.Fprintln(out, "leaderboard: in process (set STEADFAST_REDIS_URL for Redis)")
		b.top = func(ctx context.Context, n int) ([]Entry, error) {
			var out []Entry
			for _, e := range mem.Top("board", "board", n) {
				out = append(out, Entry{e.Key, int64(e.Score)})
			}
			return out, nil
		}
		b.runBoard = func(ctx context.Context) (*projector, error) {
			p, err := cqrs.NewProjector(mem, b.events, reg, cqrs.Projection[*cqrsmem.Tx]{ID: cqrs.ID{Name: "board", Version: 1},
				Handle: totalsHandler(func(_ context.Context, tx *cqrsmem.Tx, player string, points int64) error {
					tx.Add("board", player, float64(points))
					return nil
				})}, cfg(true))
			if err != nil {
				return nil, err
			}
			return &projector{p.Run}, nil
		}
		return b, nil
	}
	fmt.Fprintln(out, "leaderboard: Redis")
	opts, err := goredis.ParseURL(redisURL)
	if err != nil {
		return nil, err
	}
	rdb := goredis.NewClient(opts)
	prefix := "example:cqrs:" + run + ":"
	b.cleanup = append(b.cleanup, func() {
		keys, _ := rdb.Keys(context.Background(), prefix+"*").Result()
		if len(keys) > 0 {
			rdb.Del(context.Background(), keys...)
		}
		_ = rdb.Close()
	})
	rs, err := cqrsredis.New(rdb, cqrsredis.Config{Prefix: prefix})
	if err != nil {
		return nil, err
	}
	b.boards = rs
	b.top = func(ctx context.Context, n int) ([]Entry, error) {
		zs, err := rs.Top(ctx, "board", "board", n)
		var out []Entry
		for _, z := range zs {
			out = append(out, Entry{z.Member.(string), int64(z.Score)})
		}
		return out, err
	}
	b.runBoard = func(ctx context.Context) (*projector, error) {
		p, err := cqrs.NewProjector(rs, b.events, reg, cqrs.Projection[*cqrsredis.Tx]{ID: cqrs.ID{Name: "board", Version: 1},
			Handle: totalsHandler(func(ctx context.Context, tx *cqrsredis.Tx, player string, points int64) error {
				tx.ZIncrBy(ctx, "board", float64(points), player)
				tx.HIncrBy(ctx, "player:"+player, "points", points)
				return nil
			})}, cfg(true))
		if err != nil {
			return nil, err
		}
		return &projector{p.Run}, nil
	}
	return b, nil
}

func run(ctx context.Context, out io.Writer, pgURL, redisURL string) error {
	reg := eventsource.NewRegistry()
	eventsource.Register[Scored](reg, "game.scored", 1)
	b, err := setup(ctx, out, pgURL, redisURL, reg)
	for _, c := range b.cleanupOrNil() {
		defer c()
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := func(p *projector, err error) error {
		if err != nil {
			return err
		}
		go func() { _ = p.run(ctx) }()
		return nil
	}
	if err := start(b.runTotal(ctx, 1)); err != nil {
		return err
	}
	if err := start(b.runBoard(ctx)); err != nil {
		return err
	}

	players, err := eventsource.NewRepository(b.events, reg, eventsource.Decider[int64, Score, any]{
		Decide: func(_ int64, c Score) ([]any, error) { return []any{Scored(c)}, nil },
		Evolve: func(n int64, e any) int64 { return n + e.(Scored).Points },
	}, eventsource.RepositoryConfig[int64]{})
	if err != nil {
		return err
	}
	bus := cqrs.NewBus(cqrs.Validate())
	if err := cqrs.HandleCommand(bus, "game.score", cqrs.DeciderHandler(players, func(c Score) string { return "player-" + c.Player })); err != nil {
		return err
	}
	if err := cqrs.HandleQuery(bus, "game.top", func(ctx context.Context, q Top) ([]Entry, error) { return b.top(ctx, q.N) }); err != nil {
		return err
	}

	for _, c := range []Score{{"ada", 30}, {"bob", 50}, {"cy", 10}, {"ada", 25}, {"cy", 60}} {
		res, err := cqrs.Send(ctx, bus, c)
		if err != nil {
			return err
		}
		// Read your writes: both read models have passed the command.
		if err := cqrs.Wait(ctx, b.states, "totals", res.Position, 30*time.Second); err != nil {
			return err
		}
		if err := cqrs.Wait(ctx, b.boards, "board", res.Position, 30*time.Second); err != nil {
			return err
		}
		top, err := cqrs.Ask[Top, []Entry](ctx, bus, Top{N: 1})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%s +%d -> leader %s (%d)\n", c.Player, c.Points, top[0].Player, top[0].Points)
	}
	if _, err := cqrs.Send(ctx, bus, Score{Player: "bob", Points: -5}); err != nil {
		fmt.Fprintln(out, "refused:", err)
	}
	totals, err := b.totals(ctx, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "totals v1: ada %d, bob %d, cy %d\n", totals["ada"], totals["bob"], totals["cy"])

	// Blue/green: version 2 rebuilds from history and swaps in.
	if err := start(b.runTotal(ctx, 2)); err != nil {
		return err
	}
	for {
		v, err := b.states.ActiveVersion(ctx, "totals")
		if err != nil {
			return err
		}
		if v == 2 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	totals, err = b.totals(ctx, 2)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "totals v2 (rebuilt, serving): ada %d, bob %d, cy %d\n", totals["ada"], totals["bob"], totals["cy"])
	return nil
}

func (b *backends) cleanupOrNil() []func() {
	if b == nil {
		return nil
	}
	return b.cleanup
}
