package cqrs_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
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

// A projection fed by a broker subscription: the event store's messages
// (eventsource.ToMessage) arrive at least once, a duplicate among them,
// and each event is applied exactly once.
func ExampleConsumer() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := eventsource.NewRegistry()
	eventsource.Register[BetPlaced](reg, "bet.placed", 1)
	bus := brokermem.New(brokermem.Config{})

	models := memory.New()
	board, err := cqrs.NewConsumer(models, reg, cqrs.Projection[*memory.Tx]{
		ID: cqrs.ID{Name: "remote_leaderboard", Version: 1},
		Handle: func(ctx context.Context, tx *memory.Tx, b *cqrs.Batch) error {
			for _, e := range b.Events {
				bet := e.Event.(BetPlaced)
				tx.Add("scores", bet.Player, float64(bet.Points))
			}
			return nil
		},
	}, cqrs.ConsumerConfig{Activate: true, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	go board.Run(ctx, bus, broker.Subscription{Topic: "bets", Group: "leaderboard"})

	var msgs []broker.Message
	for i, b := range []BetPlaced{{"ada", 30}, {"bob", 20}, {"ada", 15}} {
		data, err := reg.Encode(ctx, b)
		if err != nil {
			log.Fatal(err)
		}
		data.ID = fmt.Sprintf("bet-%d", i+1)
		msgs = append(msgs, eventsource.ToMessage("bets", eventsource.Record{EventData: data,
			StreamID: "player-" + b.Player, Version: int64(i + 1), Position: eventsource.Position{Transaction: 1, Sequence: int64(i + 1)}}))
	}
	msgs = append(msgs, msgs[0]) // delivered twice
	if err := bus.Publish(ctx, msgs...); err != nil {
		log.Fatal(err)
	}
	for bus.Pending("bets", "leaderboard") > 0 {
		time.Sleep(time.Millisecond)
	}
	for _, e := range models.Top("remote_leaderboard", "scores", 2) {
		fmt.Println(e.Key, e.Score)
	}
	st, _ := models.State(ctx, board.ID())
	fmt.Println("events applied:", st.Events)
	// Output:
	// ada 45
	// bob 20
	// events applied: 3
}
