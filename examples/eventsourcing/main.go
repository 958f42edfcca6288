// Command eventsourcing shows an event-sourced bank account: a Decider
// (decide and evolve as pure functions) behind a Repository, snapshots, and
// an event whose schema changed being upcast on every read.
//
// The account's first events were written by an older version of the
// service, when "account.deposited" had no currency (schema version 1).
// Today's code registers version 2 and an upcaster from 1 to 2, so the old
// events load as the new type. Commands are decided against the loaded
// state and appended expecting the loaded version (optimistic concurrency:
// a concurrent writer makes Handle reload and decide again); a refused
// command appends nothing. A snapshot is stored every 3 events, so a load
// reads the snapshot and only the events after it, and gives the same
// state as a replay of every event.
//
// It runs with no infrastructure, on the in-process memory event store:
//
//	go run ./examples/eventsourcing
//
// and on PostgreSQL (eventsource/postgres; it creates example_events and
// its companion tables) when STEADFAST_POSTGRES_URL is set:
//
//	make services && . .services/env && go run ./examples/eventsourcing
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	esmem "github.com/steadfast-go/steadfast/eventsource/memory"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, os.Getenv("STEADFAST_POSTGRES_URL")); err != nil {
		log.Fatal(err)
	}
}

// The account's events. DepositedV1 is how "account.deposited" looked in
// schema version 1; Deposited is version 2.
type (
	Opened      struct{ Owner string }
	DepositedV1 struct{ Amount int }
	Deposited   struct {
		Amount   int
		Currency string
	}
	Withdrawn struct {
		Amount   int
		Currency string
	}
)

// Its commands.
type (
	Deposit  struct{ Amount int }
	Withdraw struct{ Amount int }
)

// Account is the state, folded from the events.
type Account struct {
	Owner   string
	Balance int
	Moves   int
}

var errInsufficient = errors.New("insufficient funds")

// account is the decider: what a command does to an account, and how each
// event changes it. Both are pure functions of their arguments.
var account = eventsource.Decider[Account, any, any]{
	Decide: func(a Account, cmd any) ([]any, error) {
		switch c := cmd.(type) {
		case Deposit:
			return []any{Deposited{Amount: c.Amount, Currency: "EUR"}}, nil
		case Withdraw:
			if c.Amount > a.Balance {
				return nil, fmt.Errorf("withdraw %d from %d: %w", c.Amount, a.Balance, errInsufficient)
			}
			return []any{Withdrawn{Amount: c.Amount, Currency: "EUR"}}, nil
		}
		return nil, fmt.Errorf("unknown command %T", cmd)
	},
	Evolve: func(a Account, event any) Account {
		switch e := event.(type) {
		case Opened:
			a.Owner = e.Owner
		case Deposited:
			a.Balance += e.Amount
			a.Moves++
		case Withdrawn:
			a.Balance -= e.Amount
			a.Moves++
		}
		return a
	},
}

// registry maps today's Go types to stable names and schema versions.
func registry() (*eventsource.Registry, error) {
	reg := eventsource.NewRegistry()
	eventsource.Register[Opened](reg, "account.opened", 1)
	eventsource.Register[DepositedV1](reg, "account.deposited", 1)
	eventsource.Register[Deposited](reg, "account.deposited", 2)
	eventsource.Register[Withdrawn](reg, "account.withdrawn", 1)
	// Version 1 deposits were all in euros.
	eventsource.Upcast(reg, func(v DepositedV1) Deposited { return Deposited{Amount: v.Amount, Currency: "EUR"} })
	return reg, reg.Check()
}

func run(ctx context.Context, out io.Writer, postgresURL string) error {
	var store eventsource.Store
	if postgresURL != "" {
		pool, err := pgxpool.New(ctx, postgresURL)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer pool.Close()
		s, err := espg.New(pool, espg.Config{Table: "example_events"})
		if err != nil {
			return err
		}
		if err := s.Migrate(ctx); err != nil {
			return err
		}
		store = s
		fmt.Fprintln(out, "event store: postgres")
	} else {
		store = esmem.New()
		fmt.Fprintln(out, "event store: memory (set STEADFAST_POSTGRES_URL for PostgreSQL)")
	}

	// Stream IDs unique to this run, so reruns on one database stay apart;
	// the output names the stream "account-1".
	category := "account" + broker.NewID()[24:]
	stream := category + "-1"
	name := func(s string) string { return strings.Replace(s, category, "account", 1) }

	// 1. What the older service wrote: schema version 1, no currency.
	if _, err := store.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.NoStream,
		Events: []eventsource.EventData{
			{Type: "account.opened", SchemaVersion: 1, Data: []byte(`{"Owner":"ada"}`)},
			{Type: "account.deposited", SchemaVersion: 1, Data: []byte(`{"Amount":100}`)},
		}}); err != nil {
		return err
	}
	fmt.Fprintln(out, "stored by the old service: account.opened v1, account.deposited v1 {\"Amount\":100}")

	reg, err := registry()
	if err != nil {
		return err
	}
	accounts, err := eventsource.NewRepository(store, reg, account, eventsource.RepositoryConfig[Account]{
		Snapshot: eventsource.Every(3),
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	loaded, err := accounts.Load(ctx, stream)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "loaded %s: %s has %d EUR at version %d (the v1 deposit upcast to v2)\n",
		name(stream), loaded.State.Owner, loaded.State.Balance, loaded.Version)

	// 2. Commands: each decided on the loaded state, appended expecting its
	// version; a refusal appends nothing.
	for _, cmd := range []any{Deposit{Amount: 50}, Withdraw{Amount: 30}, Withdraw{Amount: 500}, Deposit{Amount: 20}, Withdraw{Amount: 60}, Deposit{Amount: 5}} {
		res, err := accounts.Handle(ctx, stream, cmd)
		if errors.Is(err, errInsufficient) {
			fmt.Fprintf(out, "%-22s refused: %v\n", fmt.Sprintf("%T%+v", cmd, cmd)[5:], err)
			continue
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "%-22s -> version %d, balance %d\n", fmt.Sprintf("%T%+v", cmd, cmd)[5:], res.Version, res.State.Balance)
	}

	// 3. A load starts from the latest snapshot and reads only the events
	// after it; a full replay gives the same state.
	loaded, err = accounts.Load(ctx, stream)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "loaded %s at version %d from the snapshot at version %d, folding %d event(s) after it: balance %d\n",
		name(stream), loaded.Version, loaded.Snapshot, loaded.Events, loaded.State.Balance)
	noSnap, err := eventsource.NewRepository(store, reg, account, eventsource.RepositoryConfig[Account]{})
	if err != nil {
		return err
	}
	full, err := noSnap.Load(ctx, stream)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "replayed from the first event: %d events, balance %d, same state: %t\n",
		full.Events, full.State.Balance, full.State == loaded.State)

	// 4. The stream as stored, each event decoded at its current schema
	// version: the upcast happens on every read path (stream loads, the
	// global log that projections read with eventsource.Reader, snapshots).
	fmt.Fprintln(out, "the stream as stored, decoded at today's schema versions:")
	for rec, err := range store.ReadStream(ctx, stream, eventsource.ReadOptions{}) {
		if err != nil {
			return err
		}
		events, err := reg.Decode(rec)
		if err != nil {
			return err
		}
		for _, e := range events {
			data, err := json.Marshal(e)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "  %s v%d %s (stored as schema %d): %s\n", name(rec.StreamID), rec.Version, rec.Type, rec.SchemaVersion, data)
		}
	}
	return nil
}
