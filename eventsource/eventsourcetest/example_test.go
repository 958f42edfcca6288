package eventsourcetest_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/eventsource/eventsourcetest"
	esmem "github.com/steadfast-go/steadfast/eventsource/memory"
)

// memoryTx adapts a memory transaction to eventsourcetest.Tx.
type memoryTx struct{ *esmem.Tx }

func (t memoryTx) Commit(context.Context) error   { return t.Tx.Commit() }
func (t memoryTx) Rollback(context.Context) error { t.Tx.Rollback(); return nil }

// A store proves itself with Run: a harness makes a fresh store for each
// case and opens transactions on it. Here the memory store.
func ExampleRun() {
	_ = func(t *testing.T) {
		eventsourcetest.Run(t, eventsourcetest.Harness{
			New: func(testing.TB) eventsourcetest.Store { return esmem.New() },
			Begin: func(_ testing.TB, s eventsourcetest.Store) (eventsourcetest.Tx, int) {
				return memoryTx{s.(*esmem.Store).Begin()}, 0
			},
			Features: eventsourcetest.Features{Shredding: true},
		})
	}
	fmt.Println(len(eventsourcetest.Cases()), "cases, from", eventsourcetest.Cases()[0], "to", eventsourcetest.Cases()[len(eventsourcetest.Cases())-1])
	// Output:
	// 27 cases, from AppendAndRead to Metadata
}
