package memory_test

import (
	"context"
	"fmt"

	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
)

// Acquire, complete, and see the duplicate.
func Example() {
	ctx := context.Background()
	store, err := idemmem.New(idemmem.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	lease, _, _ := store.Acquire(ctx, "billing", "msg-1", nil)
	// ... process msg-1 ...
	_ = lease.Complete(ctx, nil)

	_, done, _ := store.Acquire(ctx, "billing", "msg-1", nil)
	fmt.Println("duplicate:", done != nil)
	// Output: duplicate: true
}
