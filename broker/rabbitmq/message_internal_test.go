package rabbitmq

import (
	"maps"
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
	got := fromDelivery(d, "q").msg
	if !maps.Equal(got.Headers, m.Headers) {
		t.Errorf("headers = %v\nwant      %v", got.Headers, m.Headers)
	}
	if !got.Time.Equal(when) || got.ID != m.ID || got.Topic != m.Topic || got.Key != m.Key || string(got.Payload) != "p" {
		t.Errorf("message = %+v", got)
	}

	// Without the nanosecond header the timestamp property is used.
	got = fromDelivery(&amqp.Delivery{Timestamp: when.Truncate(time.Second)}, "q").msg
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
	if got := fromDelivery(d, "q").msg.Headers; !maps.Equal(got, want) {
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
	got := fromDelivery(d, "q")
	if got.msg.Topic != "orders" || got.msg.Key != "order.42" || got.rejections != 2 {
		t.Errorf("recovered topic %q key %q rejections %d; want orders, order.42, 2", got.msg.Topic, got.msg.Key, got.rejections)
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
	if other := fromDelivery(d, "other"); other.rejections != 0 || other.msg.Key != "steadfast.retry.2" {
		t.Errorf("other queue: %+v", other)
	}
	if ds, err := Deaths(nil); ds != nil || err != nil {
		t.Errorf("Deaths(nil) = %v, %v", ds, err)
	}
	if _, err := Deaths(map[string]string{HeaderDeath: "not json"}); err == nil {
		t.Errorf("Deaths of garbage: no error")
	}
}
