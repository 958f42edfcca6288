package eventsource_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/steadfast-go/steadfast/eventsource"
	esmem "github.com/steadfast-go/steadfast/eventsource/memory"
)

// A bank account: its events, commands and state.
type (
	Opened    struct{ Owner string }
	Deposited struct{ Amount int }
	Withdrawn struct{ Amount int }

	Open     struct{ Owner string }
	Deposit  struct{ Amount int }
	Withdraw struct{ Amount int }

	Account struct {
		Owner   string
		Balance int
	}
)

var errInsufficient = errors.New("insufficient funds")

// account decides what a command does to an account and how each event
// changes it.
var account = eventsource.Decider[Account, any, any]{
	Decide: func(a Account, cmd any) ([]any, error) {
		switch c := cmd.(type) {
		case Open:
			if a.Owner != "" {
				return nil, nil // already open: nothing to do
			}
			return []any{Opened(c)}, nil
		case Deposit:
			return []any{Deposited(c)}, nil
		case Withdraw:
			if c.Amount > a.Balance {
				return nil, errInsufficient
			}
			return []any{Withdrawn(c)}, nil
		}
		return nil, fmt.Errorf("unknown command %T", cmd)
	},
	Evolve: func(a Account, event any) Account {
		switch e := event.(type) {
		case Opened:
			a.Owner = e.Owner
		case Deposited:
			a.Balance += e.Amount
		case Withdrawn:
			a.Balance -= e.Amount
		}
		return a
	},
}

// Register the events, build a repository, handle commands; then follow
// the global log as a projection would.
func Example() {
	ctx := context.Background()
	reg := eventsource.NewRegistry()
	eventsource.Register[Opened](reg, "account.opened", 1)
	eventsource.Register[Deposited](reg, "account.deposited", 1)
	eventsource.Register[Withdrawn](reg, "account.withdrawn", 1)

	store := esmem.New() // or eventsource/postgres
	accounts, err := eventsource.NewRepository(store, reg, account, eventsource.RepositoryConfig[Account]{
		Snapshot: eventsource.Every(100),
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, cmd := range []any{Open{Owner: "ada"}, Deposit{Amount: 100}, Withdraw{Amount: 30}} {
		if _, err := accounts.Handle(ctx, "account-1", cmd); err != nil {
			log.Fatal(err)
		}
	}
	_, err = accounts.Handle(ctx, "account-1", Withdraw{Amount: 500})
	fmt.Println("refused:", err)

	res, err := accounts.Handle(ctx, "account-1", Deposit{Amount: 5})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s has %d at version %d\n", res.State.Owner, res.State.Balance, res.Version)

	// A projection reads the global log from its stored checkpoint.
	reader, err := eventsource.NewReader(store, reg, eventsource.ReaderConfig{})
	if err != nil {
		log.Fatal(err)
	}
	batch, err := reader.Read(ctx, eventsource.Position{})
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range batch.Events {
		fmt.Printf("%s v%d %s %+v\n", e.StreamID, e.Version, e.Type, e.Event)
	}
	// Read-your-writes: the projection has seen the last command once its
	// checkpoint reached the command's position.
	fmt.Println("projection up to date:", !batch.Checkpoint.Before(res.Position()))
	// Output:
	// refused: insufficient funds
	// ada has 75 at version 4
	// account-1 v1 account.opened {Owner:ada}
	// account-1 v2 account.deposited {Amount:100}
	// account-1 v3 account.withdrawn {Amount:30}
	// account-1 v4 account.deposited {Amount:5}
	// projection up to date: true
}

// OrderPlacedV1 is how "order.placed" looked before it gained a currency.
type OrderPlacedV1 struct{ Total int }

// OrderPlaced is the current version 2.
type OrderPlaced struct {
	Total    int
	Currency string
}

// Upcasting: events stored with an older schema are read as the current
// one, on every read path.
func ExampleUpcast() {
	reg := eventsource.NewRegistry()
	eventsource.Register[OrderPlacedV1](reg, "order.placed", 1)
	eventsource.Register[OrderPlaced](reg, "order.placed", 2)
	eventsource.Upcast(reg, func(v OrderPlacedV1) OrderPlaced {
		return OrderPlaced{Total: v.Total, Currency: "EUR"}
	})
	if err := reg.Check(); err != nil {
		log.Fatal(err)
	}
	stored := eventsource.Record{EventData: eventsource.EventData{Type: "order.placed", SchemaVersion: 1, Data: []byte(`{"Total":12}`)}}
	events, err := reg.Decode(stored)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%+v\n", events[0])
	// Output:
	// {Total:12 Currency:EUR}
}

// Positions order the global log and are what projections store as their
// checkpoint: as text, as 16 sortable bytes, or as two numbers.
func ExamplePosition() {
	p := eventsource.Position{Transaction: 745001, Sequence: 12}
	q, _ := eventsource.ParsePosition("745002:3")
	fmt.Println(p, q, p.Before(q), p.Compare(q))
	b, _ := p.MarshalBinary()
	fmt.Printf("%x\n", b)
	// Output:
	// 745001:12 745002:3 true -1
	// 00000000000b5e29000000000000000c
}
