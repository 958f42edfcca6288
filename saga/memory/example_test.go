package memory_test

import (
	"context"
	"fmt"

	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
)

// The memory store runs sagas with no database: here one made of local
// steps only, which completes in the transaction that starts it. Messages
// that transitions send go to the Publisher after the commit.
func Example() {
	ctx := context.Background()
	b := brokermem.New(brokermem.Config{})
	defer b.Close()
	store, err := sagamem.New(sagamem.Config{Publisher: b})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer store.Close()
	type signup struct{ Email string }
	def, _ := saga.Define("signup", 1,
		saga.Step[signup]{Name: "create-account", Action: func(_ context.Context, tx saga.Tx, s *signup) error {
			tx.AfterCommit(func() { fmt.Println("account created for", s.Email) })
			return nil
		}},
		saga.Step[signup]{Name: "welcome", Kind: saga.Retriable, Action: func(context.Context, saga.Tx, *signup) error { return nil }},
	)
	eng, _ := saga.NewEngine(store, saga.Config{})
	_ = eng.Register(def)
	created, err := saga.Start(ctx, eng, def, "signup-1", signup{Email: "ada@example.com"})
	fmt.Println(created, err)
	created, err = saga.Start(ctx, eng, def, "signup-1", signup{Email: "ada@example.com"})
	fmt.Println(created, err)
	in, _ := store.Get(ctx, "signup-1")
	fmt.Println(in.Status)
	// Output:
	// account created for ada@example.com
	// true <nil>
	// false <nil>
	// completed
}
