package memory_test

import (
	"context"
	"testing"

	"github.com/steadfast-go/steadfast/eventsource/eventsourcetest"
	"github.com/steadfast-go/steadfast/eventsource/memory"
)

// memoryTx adapts a memory transaction to eventsourcetest.Tx.
type memoryTx struct{ *memory.Tx }

func (t memoryTx) Commit(context.Context) error   { return t.Tx.Commit() }
func (t memoryTx) Rollback(context.Context) error { t.Tx.Rollback(); return nil }

func TestConformance(t *testing.T) {
	eventsourcetest.Run(t, eventsourcetest.Harness{
		New: func(testing.TB) eventsourcetest.Store { return memory.New() },
		Begin: func(_ testing.TB, s eventsourcetest.Store) (eventsourcetest.Tx, int) {
			return memoryTx{s.(*memory.Store).Begin()}, 0
		},
		Features: eventsourcetest.Features{Shredding: true},
	})
}
