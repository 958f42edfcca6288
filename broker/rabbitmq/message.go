package rabbitmq

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

// The adapter's wire headers, in the library's reserved namespace
// (broker.ReservedHeaderPrefix). They carry what AMQP properties cannot
// (nanosecond time) and are removed on receipt; a message header that
// happens to start with the prefix is escaped on the wire and arrives
// unchanged, and a reserved header the adapter did not write is not
// delivered.
const (
	headerTime = broker.ReservedHeaderPrefix + "time" // int64 Unix nanoseconds
	headerSeq  = broker.ReservedHeaderPrefix + "seq"  // tells apart returned duplicates
)

// HeaderDeath is the Delivery header holding the broker's x-death history
// as JSON, decoded by Deaths. HeaderDeliveryCount holds a quorum queue's
// x-delivery-count. Both are absent on a first delivery.
const (
	HeaderDeath         = "x-death"
	HeaderDeliveryCount = "x-delivery-count"
)

func prop(p *amqp.Publishing, name string) *string {
	switch name {
	case broker.HeaderType:
		return &p.Type
	case broker.HeaderContentType:
		return &p.ContentType
	case broker.HeaderCorrelationID:
		return &p.CorrelationId
	case "content-encoding":
		return &p.ContentEncoding
	case "reply-to":
		return &p.ReplyTo
	case "app-id":
		return &p.AppId
	}
	return nil
}

// toPublishing maps m to an AMQP message: ID to message-id, Time to the
// timestamp property (whole seconds) plus a nanosecond header, well-known
// headers to their properties, every other header to a string header.
func toPublishing(m broker.Message, deliveryMode uint8) amqp.Publishing {
	p := amqp.Publishing{
		MessageId:    m.ID,
		Timestamp:    m.Time,
		DeliveryMode: deliveryMode,
		Body:         m.Payload,
	}
	h := make(amqp.Table, len(m.Headers)+1)
	for k, v := range m.Headers {
		if v != "" {
			if f := prop(&p, k); f != nil {
				*f = v
				continue
			}
		}
		h[brokerimpl.WireHeader(k)] = v
	}
	if !m.Time.IsZero() {
		h[headerTime] = m.Time.UnixNano()
	}
	p.Headers = h
	return p
}

// delivered is what fromDelivery learns about an AMQP delivery.
type delivered struct {
	msg broker.Message
	// rejections is how often the message was rejected (nacked without
	// requeue) from queue before, from x-death.
	rejections int64
	// deliveryCount is a quorum queue's x-delivery-count.
	deliveryCount int64
}

// MessageFromDelivery maps an AMQP delivery back to the message that was
// published, exactly as the Subscriber does: reserved headers are removed,
// full-precision time and escaped header names are restored, AMQP
// properties (type, content-type, correlation-id, ...) become headers, and
// broker-added headers such as x-death stay as strings (x-death as JSON, see
// Deaths). Tools that read queues directly, such as dead-letter inspectors,
// use it so they decode the wire format the same way.
func MessageFromDelivery(d *amqp.Delivery) broker.Message {
	return fromDelivery(d, "").msg
}

// fromDelivery maps an AMQP delivery consumed from queue back to a message.
// A message that was dead-lettered from queue and came back (a retry chain)
// gets its original exchange and routing key from its x-death entry.
func fromDelivery(d *amqp.Delivery, queue string) delivered {
	out := delivered{msg: broker.Message{
		ID:      d.MessageId,
		Topic:   d.Exchange,
		Key:     d.RoutingKey,
		Payload: d.Body,
	}}
	var headers map[string]string
	set := func(k, v string) {
		if headers == nil {
			headers = make(map[string]string, len(d.Headers)+2)
		}
		headers[k] = v
	}
	var nanos int64
	var haveNanos bool
	for k, v := range d.Headers {
		switch {
		case k == headerTime:
			nanos, haveNanos = toInt64(v)
			continue
		case strings.HasPrefix(k, broker.ReservedHeaderPrefix):
			var ok bool
			if k, ok = brokerimpl.MessageHeader(k); !ok {
				continue
			}
		case k == HeaderDeath:
			if deaths, ok := v.([]any); ok {
				for _, e := range deaths {
					t, ok := e.(amqp.Table)
					if !ok || t["queue"] != queue || t["reason"] != "rejected" {
						continue
					}
					out.rejections, _ = toInt64(t["count"])
					if ex, ok := t["exchange"].(string); ok {
						out.msg.Topic = ex
					}
					if keys, ok := t["routing-keys"].([]any); ok && len(keys) > 0 {
						if key, ok := keys[0].(string); ok {
							out.msg.Key = key
						}
					}
				}
			}
		case k == HeaderDeliveryCount:
			out.deliveryCount, _ = toInt64(v)
		}
		set(k, headerString(v))
	}
	props := [...]struct{ name, v string }{
		{broker.HeaderType, d.Type},
		{broker.HeaderContentType, d.ContentType},
		{broker.HeaderCorrelationID, d.CorrelationId},
		{"content-encoding", d.ContentEncoding},
		{"reply-to", d.ReplyTo},
		{"app-id", d.AppId},
	}
	for _, p := range props {
		if p.v != "" {
			set(p.name, p.v)
		}
	}
	out.msg.Headers = headers
	switch {
	case haveNanos:
		out.msg.Time = time.Unix(0, nanos)
	case !d.Timestamp.IsZero():
		out.msg.Time = d.Timestamp
	}
	return out
}

func toInt64(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int32:
		return int64(n), true
	case int16:
		return int64(n), true
	case int8:
		return int64(n), true
	case int:
		return int64(n), true
	case uint8:
		return int64(n), true
	case uint16:
		return int64(n), true
	case uint32:
		return int64(n), true
	}
	return 0, false
}

// headerString renders an AMQP header value as a string: strings as they
// are, numbers and booleans in Go syntax, timestamps in RFC 3339, tables
// and arrays as JSON.
func headerString(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case []byte:
		return string(x)
	case bool:
		return strconv.FormatBool(x)
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp.Table, []any:
		b, err := json.Marshal(jsonValue(x))
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
	if n, ok := toInt64(v); ok {
		return strconv.FormatInt(n, 10)
	}
	return fmt.Sprint(v)
}

func jsonValue(v any) any {
	switch x := v.(type) {
	case amqp.Table:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = jsonValue(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = jsonValue(e)
		}
		return s
	case []byte:
		return string(x)
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case amqp.Decimal:
		return fmt.Sprint(x)
	}
	return v
}

// Death is one entry of a message's x-death history: the broker adds or
// updates one each time it dead-letters the message from a queue for a
// reason.
type Death struct {
	// Queue the message was dead-lettered from.
	Queue string `json:"queue"`
	// Reason is "rejected" (nack without requeue), "expired" (TTL),
	// "maxlen" (overflow) or "delivery_limit" (quorum queues).
	Reason string `json:"reason"`
	// Exchange and RoutingKeys the message had been published with when it
	// entered Queue.
	Exchange    string   `json:"exchange"`
	RoutingKeys []string `json:"routing-keys"`
	// Count is how many times the message was dead-lettered from Queue for
	// Reason.
	Count int64 `json:"count"`
	// Time of the first such event, to the second.
	Time time.Time `json:"time"`
}

// Deaths decodes the x-death history of a delivery, most recent first. It
// returns nil when the message was never dead-lettered.
func Deaths(headers map[string]string) ([]Death, error) {
	v, ok := headers[HeaderDeath]
	if !ok {
		return nil, nil
	}
	var out []Death
	if err := json.Unmarshal([]byte(v), &out); err != nil {
		return nil, fmt.Errorf("rabbitmq: decode %s header: %w", HeaderDeath, err)
	}
	return out, nil
}
