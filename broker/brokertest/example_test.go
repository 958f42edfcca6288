package brokertest_test

import (
	"fmt"
	"testing"

	"github.com/steadfast-go/steadfast/broker/brokertest"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
)

// An adapter proves itself with Run: it declares what its broker promises
// and gives every case a fresh backend. Here the in-memory broker, which
// promises everything but surviving a restart.
func ExampleRun() {
	_ = func(t *testing.T) {
		brokertest.Run(t, brokertest.Features{
			ConsumerGroups: true, Persistent: true, PerKeyOrder: true, ExactlyOnce: true,
		}, func(t *testing.T) brokertest.Backend {
			b := brokermem.New(brokermem.Config{})
			t.Cleanup(func() { _ = b.Close() })
			return brokertest.Backend{Publisher: b, Subscriber: b}
		})
	}
}

// SeqMessage numbers the messages of a key, so a handler can check that a
// key's messages arrive in order.
func ExampleSeqMessage() {
	for seq := range 3 {
		m := brokertest.SeqMessage("orders", "order-7", seq)
		fmt.Printf("key=%s seq=%s payload=%s\n", m.Key, m.Headers["seq"], m.Payload)
	}
	// Output:
	// key=order-7 seq=0 payload=order-7/0
	// key=order-7 seq=1 payload=order-7/1
	// key=order-7 seq=2 payload=order-7/2
}
