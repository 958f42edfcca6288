package rabbitdlq

import (
	"math"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// FuzzDeadLetter: a message read from a dead-letter queue, whatever its
// x-death history says (counts up to MaxInt64 or negative, any reason,
// names and times), decodes without panicking into a dead letter whose
// attempt count is not negative.
func FuzzDeadLetter(f *testing.F) {
	f.Add("rejected", "orders.billing", "orders", "k", int64(3), int64(1_700_000_000), "id", true)
	f.Add("rejected", "", "", "", int64(math.MaxInt64), int64(-1), "", false)
	f.Add("expired", "q", "x", "", int64(-4), int64(math.MaxInt64), "\xff", true)
	f.Fuzz(func(t *testing.T, reason, queue, exchange, key string, count, sec int64, id string, withKeys bool) {
		death := amqp.Table{"reason": reason, "queue": queue, "exchange": exchange, "count": count, "time": time.Unix(sec, 0)}
		if withKeys {
			death["routing-keys"] = []interface{}{key}
		}
		d := &amqp.Delivery{MessageId: id, Exchange: "dlx", RoutingKey: key, Body: []byte("payload"),
			Headers: amqp.Table{"x-death": []interface{}{death}}}
		dl := deadLetter(d, "1")
		if dl.Envelope.Attempts < 0 {
			t.Fatalf("attempts %d from count %d", dl.Envelope.Attempts, count)
		}
		if dl.ID() == "" {
			t.Fatal("a dead letter without an ID")
		}
	})
}
