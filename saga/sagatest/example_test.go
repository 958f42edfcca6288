package sagatest_test

import (
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

// A backend proves its stores with Run: every case on fresh stores whose
// outbox publishes through the publisher the factory is given, here on
// the memory broker. (newMyStores is a placeholder for your
// implementation.)
func ExampleRun() {
	_ = func(t *testing.T) {
		sagatest.Run(t, sagatest.Features{Orders: 1000}, func(t *testing.T, pub broker.Publisher) sagatest.Stores {
			return newMyStores(t, pub)
		}, sagatest.MemoryBroker)
	}
}

// The order flow every case drives, as another process would build it
// (the crash test's engine process, for instance).
func ExampleOrderDefinition() {
	def, err := sagatest.OrderDefinition(func(s string) string { return "shop." + s }, sagatest.OrderOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, s := range def.Steps() {
		fmt.Printf("%s (%s), compensation: %q\n", s.Name, s.Kind, s.Compensation)
	}
	// Output:
	// reserve-inventory (compensatable), compensation: "command"
	// charge-payment (pivot), compensation: ""
	// ship (retriable), compensation: ""
}

func newMyStores(*testing.T, broker.Publisher) sagatest.Stores {
	var s saga.Store
	return sagatest.Stores{Store: s}
}
