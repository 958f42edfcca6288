package memory_test

import (
	"context"
	"fmt"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/memory"
	"github.com/steadfast-go/steadfast/eventsource"
)

// A batch's writes and its checkpoint apply together; the serving version
// is what readers see.
func ExampleStore() {
	ctx := context.Background()
	s := memory.New()
	id := cqrs.ID{Name: "stock", Version: 1}
	lease, _ := s.Acquire(ctx, id, "worker-1")
	to := eventsource.Position{Transaction: 1, Sequence: 2}
	_ = lease.Apply(ctx, cqrs.Commit{To: to, Events: 2}, func(ctx context.Context, tx *memory.Tx, _ eventsource.Position) error {
		tx.Add("items", "apple", 3)
		tx.Add("items", "pear", 1)
		return nil
	})
	_ = s.Activate(ctx, id, nil)
	v, _ := s.Get("stock", "items", "apple")
	st, _ := s.State(ctx, id)
	fmt.Println(v, st.Checkpoint, st.Events, st.Active)
	// Output: 3 1:2 2 true
}
