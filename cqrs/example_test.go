package cqrs_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/memory"
	"github.com/steadfast-go/steadfast/eventsource"
	esmemory "github.com/steadfast-go/steadfast/eventsource/memory"
)

type PlaceBet struct {
	Player string
	Points int64
}

type BetPlaced struct {
	Player string
	Points int64
}

type TopPlayers struct{ N int }

// A command goes through the bus to a decider, a projection applies its
// event to a leaderboard exactly once, and the caller waits for the
// projection to pass the command's position before it queries
// (read-your-writes).
func Example() {
	ctx := context.Background()
	events := esmemory.New()
	reg := eventsource.NewRegistry()
	eventsource.Register[BetPlaced](reg, "bet.placed", 1)
	bets, err := eventsource.NewRepository(events, reg, eventsource.Decider[int, PlaceBet, any]{
		Decide: func(_ int, c PlaceBet) ([]any, error) { return []any{BetPlaced(c)}, nil },
		Evolve: func(n int, _ any) int { return n + 1 },
	}, eventsource.RepositoryConfig[int]{})
	if err != nil {
		log.Fatal(err)
	}

	models := memory.New()
	board, err := cqrs.NewProjector(models, events, reg, cqrs.Projection[*memory.Tx]{
		ID: cqrs.ID{Name: "leaderboard", Version: 1},
		Handle: func(ctx context.Context, tx *memory.Tx, b *cqrs.Batch) error {
			for _, e := range b.Events {
				bet := e.Event.(BetPlaced)
				tx.Add("scores", bet.Player, float64(bet.Points))
			}
			return nil
		},
	}, cqrs.Config{Activate: true, PollInterval: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go board.Run(ctx)

	bus := cqrs.NewBus(cqrs.Validate())
	_ = cqrs.HandleCommand(bus, "bet.place", cqrs.DeciderHandler(bets, func(c PlaceBet) string { return "player-" + c.Player }))
	_ = cqrs.HandleQuery(bus, "players.top", func(ctx context.Context, q TopPlayers) ([]memory.Entry, error) {
		return models.Top("leaderboard", "scores", q.N), nil
	})

	var last cqrs.Result
	for _, c := range []PlaceBet{{"ada", 30}, {"bob", 20}, {"ada", 15}} {
		if last, err = cqrs.Send(ctx, bus, c); err != nil {
			log.Fatal(err)
		}
	}
	if err := cqrs.Wait(ctx, models, "leaderboard", last.Position, 10*time.Second); err != nil {
		log.Fatal(err)
	}
	top, err := cqrs.Ask[TopPlayers, []memory.Entry](ctx, bus, TopPlayers{N: 2})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range top {
		fmt.Println(e.Key, e.Score)
	}
	_, err = cqrs.Send(ctx, bus, TopPlayers{})
	fmt.Println(err)
	// Output:
	// ada 45
	// bob 20
	// cqrs: no handler registered: command type cqrs_test.TopPlayers
}
