package memory_test

import (
	"context"
	"fmt"
	"log"

	"github.com/steadfast-go/steadfast/eventsource"
	esmem "github.com/steadfast-go/steadfast/eventsource/memory"
)

// A transaction appends to two streams; readers of the global log see
// nothing of it until it commits, then both events at once.
func ExampleStore_Begin() {
	ctx := context.Background()
	store := esmem.New()
	tx := store.Begin()
	for _, stream := range []string{"order-1", "invoice-1"} {
		if _, err := tx.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.NoStream,
			Events: []eventsource.EventData{{Type: "created", SchemaVersion: 1}}}); err != nil {
			log.Fatal(err)
		}
	}
	page, _ := store.ReadLog(ctx, eventsource.LogQuery{})
	fmt.Println("before commit:", len(page.Records), "events, held back:", page.HeldBack)
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	page, _ = store.ReadLog(ctx, eventsource.LogQuery{})
	for _, r := range page.Records {
		fmt.Println(r.StreamID, r.Version, r.Type)
	}
	// Output:
	// before commit: 0 events, held back: false
	// order-1 1 created
	// invoice-1 1 created
}
