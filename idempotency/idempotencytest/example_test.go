package idempotencytest_test

import (
	"testing"

	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/idempotencytest"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
)

// A store implementation's conformance test. It runs under go test, so this
// example only compiles.
func ExampleRun() {
	_ = func(t *testing.T) {
		idempotencytest.Run(t, idempotencytest.Features{LeaseExpiry: true},
			func(t *testing.T, o idempotencytest.Options) idempotency.Store {
				s, err := idemmem.New(idemmem.Config{Lease: o.Lease})
				if err != nil {
					t.Fatal(err)
				}
				return s
			})
	}
}
