package rabbitmq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
)

// FuzzFromDelivery: a delivery from a producer we do not control (any
// exchange, routing key, ID, x-death history and x-delivery-count, reserved
// header names) decodes without panicking into a message with a non-empty
// ID, no adapter header, a topic that is the delivery's exchange unless it
// came back from the group's retry chain, and an attempt in [1,
// maxAttempt].
func FuzzFromDelivery(f *testing.F) {
	f.Add("orders", "k", "", "q", "rejected", "victim", "vk", int64(1<<62), int64(-4), true, 3, 5)
	f.Add("q.return", "steadfast.retry.2", "id", "q", "rejected", "orders", "k", int64(1), int64(2), false, 2, 1)
	f.Add("q.return", "steadfast.parking", "id", "q", "expired", "", "", int64(-1), int64(1<<40), true, 100, 1<<62)
	f.Fuzz(func(t *testing.T, exchange, key, id, dq, reason, dex, dkey string, count, dcount int64, redelivered bool, levels, maxAttempts int) {
		levels = min(max(levels, 0), 100)
		d := &amqp.Delivery{
			Exchange: exchange, RoutingKey: key, MessageId: id, Redelivered: redelivered, Body: []byte(reason),
			Headers: amqp.Table{
				HeaderDeath: []any{amqp.Table{"queue": dq, "reason": reason, "count": count,
					"exchange": dex, "routing-keys": []any{dkey}}, "junk"},
				HeaderDeliveryCount:                   dcount,
				headerTime:                            count,
				broker.ReservedHeaderPrefix + "seq":   "1",
				broker.ReservedHeaderPrefix + "u-x-y": dkey,
			},
		}
		for _, src := range []source{{}, {queue: "q", topic: "orders", chainLevels: levels}, {queue: "q", topic: "orders", quorum: true}} {
			got := fromDelivery(d, src)
			if got.msg.ID == "" || (id != "" && got.msg.ID != id) {
				t.Fatalf("ID %q for message-id %q", got.msg.ID, id)
			}
			fromChain := src.chainLevels > 0 && exchange == "q.return"
			if !fromChain && (got.msg.Topic != exchange || got.msg.Key != key) {
				t.Fatalf("topic/key %q/%q, want the delivery's %q/%q", got.msg.Topic, got.msg.Key, exchange, key)
			}
			if fromChain && got.msg.Topic != "orders" {
				t.Fatalf("topic %q back from the chain", got.msg.Topic)
			}
			for k := range got.msg.Headers {
				if k == headerTime || k == headerSeq {
					t.Fatalf("adapter header %q delivered", k)
				}
			}
			if a := firstAttempt(got, redelivered, maxAttempts); a < 1 || a > maxAttempt {
				t.Fatalf("attempt %d", a)
			}
		}
		if _, err := Deaths(map[string]string{HeaderDeath: dkey}); err != nil && !strings.HasPrefix(err.Error(), "rabbitmq: ") {
			t.Fatalf("Deaths error %v", err)
		}
	})
}

// FuzzDeaths: any x-death header text decodes to entries or to an error
// naming the package, never a panic.
func FuzzDeaths(f *testing.F) {
	f.Add(`[{"queue":"q","reason":"rejected","count":9223372036854775807,"exchange":"x","routing-keys":["k"],"time":"2026-01-02T03:04:05Z"}]`)
	f.Add(`[{"count":-1}]`)
	f.Add(`{"queue":1}`)
	f.Add("\xff")
	f.Fuzz(func(t *testing.T, s string) {
		ds, err := Deaths(map[string]string{HeaderDeath: s})
		if err != nil && (ds != nil || !strings.HasPrefix(err.Error(), "rabbitmq: decode x-death")) {
			t.Fatalf("Deaths = %v, %v", ds, err)
		}
	})
}

// headerPayload builds a content header frame payload with the given
// header table bytes (a long string), and a message-id after it.
func headerPayload(table []byte, id string) []byte {
	p := make([]byte, 0, 32+len(table))
	p = binary.BigEndian.AppendUint16(p, 60) // basic
	p = binary.BigEndian.AppendUint16(p, 0)
	p = binary.BigEndian.AppendUint64(p, 0)
	p = binary.BigEndian.AppendUint16(p, propContentType|propHeaders|0x0080) // + message-id
	p = append(p, 4)
	p = append(p, "text"...)
	p = binary.BigEndian.AppendUint32(p, uint32(len(table)))
	p = append(p, table...)
	p = append(p, byte(len(id)))
	return append(p, id...)
}

// FuzzGuardHeader: the delivery guard never panics on a content header,
// lets through unchanged every header it accepts, and replaces every other
// with one it accepts, which keeps the class, body size and the properties
// before the table.
func FuzzGuardHeader(f *testing.F) {
	f.Add([]byte{1, 'a', 'S', 0, 0, 0, 1, 'v'})
	f.Add([]byte{1, 'a', 'F', 0, 0, 0, 0})
	f.Add([]byte{1, 'a', 'Z'})
	f.Add([]byte{1, 'a', 'A', 0, 0, 0, 2, 'l', 0})
	f.Add([]byte{1, 'a', 'x', 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, table []byte) {
		p := headerPayload(table, "id")
		out, ok := guardHeader(p)
		if ok {
			if out != nil {
				t.Fatal("accepted header rewritten")
			}
			return
		}
		if !bytes.Equal(out[:19], p[:19]) {
			t.Fatalf("rewritten header changed its start: %x, was %x", out[:19], p[:19])
		}
		if _, ok := guardHeader(out); !ok {
			t.Fatalf("rewritten header refused again: %x", out)
		}
		if _, err := checkTable(out, 19, 0); err != nil {
			t.Fatalf("rewritten table: %v", err)
		}
		_, err := checkTable(p, 19, 0)
		if !errors.Is(err, errUndecodable) {
			t.Fatalf("refused for %v", err)
		}
	})
}
