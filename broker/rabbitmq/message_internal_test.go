package rabbitmq

import (
	"maps"
	"math"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
)

func TestMessageMappingRoundTrip(t *testing.T) {
	when := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	m := broker.Message{
		ID: "id-1", Topic: "orders", Key: "k", Payload: []byte("p"), Time: when,
		Headers: map[string]string{
			broker.HeaderType:          "order.created",
			broker.HeaderContentType:   "application/json",
			broker.HeaderCorrelationID: "c-1",
			"reply-to":                 "replies",
			"steadfast-time":           "user value under the reserved prefix",
			"steadfast-u-nested":       "twice",
			"x-steadfast-time":         "the old namespace is a plain header now",
			broker.HeaderCausationID:   "",
			"content-encoding":         "", // empty: stays a header
			"plain":                    "v",
		},
	}
	p := toPublishing(m, amqp.Persistent)
	if p.MessageId != "id-1" || p.Type != "order.created" || p.ContentType != "application/json" ||
		p.CorrelationId != "c-1" || p.ReplyTo != "replies" || p.DeliveryMode != amqp.Persistent {
		t.Fatalf("properties not mapped: %+v", p)
	}
	if _, ok := p.Headers[broker.HeaderType]; ok {
		t.Errorf("type travels in both the property and a header")
	}
	if v := p.Headers["steadfast-u-steadfast-time"]; v != "user value under the reserved prefix" {
		t.Errorf("reserved-prefix user header not escaped: %v", p.Headers)
	}
	if p.Headers[headerTime] != when.UnixNano() {
		t.Errorf("time header = %v", p.Headers[headerTime])
	}
	if err := p.Headers.Validate(); err != nil {
		t.Fatal(err)
	}

	d := &amqp.Delivery{
		Headers: p.Headers, ContentType: p.ContentType, CorrelationId: p.CorrelationId, Type: p.Type,
		ReplyTo: p.ReplyTo, MessageId: p.MessageId, Timestamp: when.Truncate(time.Second),
		Exchange: "orders", RoutingKey: "k", Body: p.Body,
	}
	got := fromDelivery(d, source{queue: "q"}).msg
	if !maps.Equal(got.Headers, m.Headers) {
		t.Errorf("headers = %v\nwant      %v", got.Headers, m.Headers)
	}
	if !got.Time.Equal(when) || got.ID != m.ID || got.Topic != m.Topic || got.Key != m.Key || string(got.Payload) != "p" {
		t.Errorf("message = %+v", got)
	}

	// Without the nanosecond header the timestamp property is used.
	got = fromDelivery(&amqp.Delivery{Timestamp: when.Truncate(time.Second)}, source{queue: "q"}).msg
	if !got.Time.Equal(when.Truncate(time.Second)) || got.Headers != nil {
		t.Errorf("foreign message: time %v headers %v", got.Time, got.Headers)
	}
}

func TestForeignHeaderValues(t *testing.T) {
	ts := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	d := &amqp.Delivery{Headers: amqp.Table{
		"int": int32(7), "long": int64(-3), "bool": true, "float": 1.5, "bytes": []byte("raw"),
		"time": ts, "nil": nil, "table": amqp.Table{"a": "b"}, "array": []any{"x", int64(1)},
	}}
	want := map[string]string{
		"int": "7", "long": "-3", "bool": "true", "float": "1.5", "bytes": "raw",
		"time": "2026-05-06T07:08:09Z", "nil": "", "table": `{"a":"b"}`, "array": `["x",1]`,
	}
	if got := fromDelivery(d, source{queue: "q"}).msg.Headers; !maps.Equal(got, want) {
		t.Errorf("headers = %v\nwant      %v", got, want)
	}
}

func TestDeathsAndRetryChainRecovery(t *testing.T) {
	ts := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	d := &amqp.Delivery{
		Exchange: "q.return", RoutingKey: "steadfast.retry.2", Redelivered: false,
		Headers: amqp.Table{
			"x-death": []any{
				amqp.Table{"count": int64(1), "reason": "expired", "queue": "q.retry.1", "time": ts,
					"exchange": "q.retry", "routing-keys": []any{"order.42"}},
				amqp.Table{"count": int64(2), "reason": "rejected", "queue": "q", "time": ts,
					"exchange": "orders", "routing-keys": []any{"order.42"}},
			},
			"x-first-death-queue": "q",
		},
	}
	src := source{queue: "q", topic: "orders", chainLevels: 3}
	got := fromDelivery(d, src)
	if got.msg.Topic != "orders" || got.msg.Key != "order.42" || got.hops != 1 {
		t.Errorf("recovered topic %q key %q hops %d; want orders, order.42, 1", got.msg.Topic, got.msg.Key, got.hops)
	}
	deaths, err := Deaths(got.msg.Headers)
	if err != nil {
		t.Fatal(err)
	}
	if len(deaths) != 2 || deaths[1].Queue != "q" || deaths[1].Reason != "rejected" || deaths[1].Count != 2 ||
		deaths[1].Exchange != "orders" || deaths[1].RoutingKeys[0] != "order.42" || !deaths[1].Time.Equal(ts) {
		t.Errorf("deaths = %+v", deaths)
	}
	// Another queue's history does not count as this queue's attempts.
	if other := fromDelivery(d, source{queue: "other", topic: "orders", chainLevels: 3}); other.hops != 0 || other.msg.Key != "steadfast.retry.2" {
		t.Errorf("other queue: %+v", other)
	}
	if ds, err := Deaths(nil); ds != nil || err != nil {
		t.Errorf("Deaths(nil) = %v, %v", ds, err)
	}
	if _, err := Deaths(map[string]string{HeaderDeath: "not json"}); err == nil {
		t.Errorf("Deaths of garbage: no error")
	}
}

// TestForgedWireMetadata: x-death and x-delivery-count written by a
// producer never rename a message delivered from its topic's exchange and
// never count as attempts; counts the broker wrote are clamped, and the
// attempt arithmetic saturates instead of overflowing.
func TestForgedWireMetadata(t *testing.T) {
	forged := amqp.Table{
		"x-death": []any{amqp.Table{"count": int64(math.MaxInt64), "reason": "rejected", "queue": "q",
			"exchange": "victim", "routing-keys": []any{"victim-key"}}},
		"x-delivery-count": int64(math.MaxInt64),
	}
	src := source{queue: "q", topic: "orders", chainLevels: 3}
	for _, redelivered := range []bool{false, true} {
		d := &amqp.Delivery{Exchange: "orders", RoutingKey: "k", MessageId: "id", Headers: forged, Redelivered: redelivered}
		got := fromDelivery(d, src)
		if got.msg.Topic != "orders" || got.msg.Key != "k" || got.hops != 0 || got.deliveryCount != 0 {
			t.Errorf("redelivered %v: topic %q key %q hops %d count %d; want orders, k, 0, 0", redelivered, got.msg.Topic, got.msg.Key, got.hops, got.deliveryCount)
		}
		want := int64(1)
		if redelivered {
			want = 2
		}
		if a := firstAttempt(got, redelivered, 5); a != want {
			t.Errorf("redelivered %v: attempt %d, want %d", redelivered, a, want)
		}
	}
	// On a quorum queue the broker's count of a redelivery is used,
	// clamped; a negative one is none.
	q := source{queue: "q", topic: "orders", quorum: true}
	for _, c := range []struct {
		v    any
		want int64
	}{{int64(math.MaxInt64), 1 + maxDeliveryCount}, {int64(-4), 2}, {int32(3), 4}, {"junk", 2}} {
		d := &amqp.Delivery{Exchange: "orders", RoutingKey: "k", MessageId: "id", Redelivered: true,
			Headers: amqp.Table{"x-delivery-count": c.v}}
		if a := firstAttempt(fromDelivery(d, q), true, 3); a != c.want {
			t.Errorf("x-delivery-count %v: attempt %d, want %d", c.v, a, c.want)
		}
	}
	// A message back from the chain's last level: hops from the routing
	// key, saturating with an absurd MaxAttempts.
	back := &amqp.Delivery{Exchange: "q.return", RoutingKey: "steadfast.parking", MessageId: "id"}
	got := fromDelivery(back, src)
	if got.hops != 3 || got.msg.Topic != "orders" {
		t.Errorf("parking return: hops %d topic %q", got.hops, got.msg.Topic)
	}
	if a := firstAttempt(got, false, 2); a != 7 {
		t.Errorf("attempt after 3 hops of 2 = %d, want 7", a)
	}
	if a := firstAttempt(got, true, math.MaxInt); a != maxAttempt {
		t.Errorf("attempt with MaxAttempts MaxInt = %d, want %d", a, maxAttempt)
	}
	for _, k := range []string{"steadfast.retry.0", "steadfast.retry.99", "steadfast.retry.-1", "steadfast.retry.x", "other"} {
		if h := chainHops(k, 3); h != 1 {
			t.Errorf("chainHops(%q) = %d, want 1", k, h)
		}
	}
}

// TestFallbackID: a delivery without a message-id gets an ID that is the
// same on every redelivery, through the retry chain too, and differs
// between different messages.
func TestFallbackID(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	first := &amqp.Delivery{Exchange: "orders", RoutingKey: "k", Body: []byte("p"), Timestamp: ts, Headers: amqp.Table{"a": "b"}}
	a := fromDelivery(first, source{queue: "q", topic: "orders", chainLevels: 2}).msg.ID
	if !strings.HasPrefix(a, FallbackIDPrefix) || len(a) != len(FallbackIDPrefix)+32 {
		t.Fatalf("fallback ID %q", a)
	}
	again := *first
	again.Redelivered = true
	again.Exchange, again.RoutingKey = "q.return", "steadfast.retry.2"
	again.Headers = amqp.Table{"a": "b", "x-first-death-queue": "q", "x-death": []any{amqp.Table{
		"count": int64(1), "reason": "rejected", "queue": "q", "exchange": "orders", "routing-keys": []any{"k"}}}}
	if b := fromDelivery(&again, source{queue: "q", topic: "orders", chainLevels: 2}).msg.ID; b != a {
		t.Errorf("fallback ID changed through the retry chain: %q, then %q", a, b)
	}
	other := *first
	other.Body = []byte("q")
	if c := MessageFromDelivery(&other).ID; c == a {
		t.Errorf("different payloads, same fallback ID %q", c)
	}
	if id := MessageFromDelivery(&amqp.Delivery{MessageId: "given"}).ID; id != "given" {
		t.Errorf("ID %q replaced", id)
	}
}
