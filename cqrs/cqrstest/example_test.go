package cqrstest_test

import (
	"context"
	"fmt"

	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
)

// The suite's events, as a backend's test encodes them.
func ExampleRegistry() {
	d, err := cqrstest.Registry().Encode(context.Background(), cqrstest.ScoreAdded{Player: "ada", Points: 3})
	fmt.Println(d.Type, d.SchemaVersion, string(d.Data), err)
	// Output: score.added 1 {"player":"ada","points":3} <nil>
}
