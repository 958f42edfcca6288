package rabbitmq

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
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
	// headerUndecodable replaces the header table of a delivery the
	// connection's guard could not let through (see guard.go); its value
	// says why.
	headerUndecodable = broker.ReservedHeaderPrefix + "undecodable"
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
	// hops is how many times the message went down the group's retry
	// chain and came back: read from the routing key the broker set when
	// the message left the chain (never from headers a producer could
	// write), at most the chain's length.
	hops int64
	// deliveryCount is a quorum queue's x-delivery-count of a redelivered
	// message, clamped to [0, maxDeliveryCount].
	deliveryCount int64
	// undecodable says why the delivery could not be read (see guard.go),
	// or is empty.
	undecodable string
}

// source is what the subscriber knows of the queue a delivery came from;
// the zero value knows nothing (MessageFromDelivery).
type source struct {
	// queue is the group queue.
	queue string
	// topic is the subscription's topic: the exchange the group queue is
	// bound to.
	topic string
	// chainLevels is the number of retry levels of the group's retry
	// chain, 0 without one.
	chainLevels int
	// quorum: the queue is a quorum queue, whose broker keeps
	// x-delivery-count.
	quorum bool
}

// maxDeliveryCount bounds the x-delivery-count taken into account, and
// maxAttempt every Delivery.Attempt: forged or absurd values cannot
// overflow or reach the limits of a retry policy's arithmetic.
const (
	maxDeliveryCount = 1 << 20
	maxAttempt       = 1 << 30
)

// MessageFromDelivery maps an AMQP delivery back to the message that was
// published, exactly as the Subscriber does: reserved headers are removed,
// full-precision time and escaped header names are restored, AMQP
// properties (type, content-type, correlation-id, ...) become headers, and
// broker-added headers such as x-death stay as strings (x-death as JSON, see
// Deaths). The topic and key are the delivery's exchange and routing key:
// headers never rename a message. A delivery without a message-id gets the
// fallback ID of FallbackID. Tools that read queues directly, such as
// dead-letter inspectors, use it so they decode the wire format the same
// way.
func MessageFromDelivery(d *amqp.Delivery) broker.Message {
	return fromDelivery(d, source{}).msg
}

// fromDelivery maps an AMQP delivery consumed from src back to a message.
//
// Topic and Key are the delivery's exchange and routing key, except for a
// message that comes back from the group's retry chain (its exchange is the
// chain's return exchange, which only the broker publishes to): its topic
// is then the subscription's, and its key the routing key the broker
// recorded in the x-death entry of its rejection from the group queue.
// Wire metadata a producer wrote (x-death, x-delivery-count) never renames
// a message delivered from its topic's exchange, and never counts as an
// attempt there.
func fromDelivery(d *amqp.Delivery, src source) delivered {
	out := delivered{msg: broker.Message{
		ID:      d.MessageId,
		Topic:   d.Exchange,
		Key:     d.RoutingKey,
		Payload: d.Body,
	}}
	fromChain := src.chainLevels > 0 && src.queue != "" && d.Exchange == src.queue+".return"
	if fromChain {
		out.msg.Topic = src.topic
		out.hops = chainHops(d.RoutingKey, src.chainLevels)
	}
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
		case k == headerUndecodable:
			out.undecodable = headerString(v)
			continue
		case strings.HasPrefix(k, broker.ReservedHeaderPrefix):
			var ok bool
			if k, ok = brokerimpl.MessageHeader(k); !ok {
				continue
			}
		case k == HeaderDeath && fromChain:
			if key, ok := rejectedKey(v, src.queue); ok {
				out.msg.Key = key
			}
		case k == HeaderDeliveryCount && src.quorum && d.Redelivered:
			n, _ := toInt64(v)
			out.deliveryCount = min(max(n, 0), maxDeliveryCount)
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
	if out.msg.ID == "" {
		out.msg.ID = FallbackID(out.msg)
	}
	return out
}

// chainHops returns how many retry levels a message coming back from a
// chain of levels levels went through, from the routing key the chain's
// queues dead-letter it with: steadfast.retry.<n+1> after n levels,
// steadfast.parking after the last. Anything else counts as one.
func chainHops(key string, levels int) int64 {
	if key == parkingKey {
		return int64(levels)
	}
	if n, ok := strings.CutPrefix(key, "steadfast.retry."); ok {
		if l, err := strconv.Atoi(n); err == nil && l >= 2 && l <= levels {
			return int64(l - 1)
		}
	}
	return 1
}

// rejectedKey returns the first routing key of the x-death entry that
// records the message's rejection from queue.
func rejectedKey(v any, queue string) (string, bool) {
	deaths, ok := v.([]any)
	if !ok {
		return "", false
	}
	for _, e := range deaths {
		t, ok := e.(amqp.Table)
		if !ok || t["queue"] != queue || t["reason"] != "rejected" {
			continue
		}
		if keys, ok := t["routing-keys"].([]any); ok && len(keys) > 0 {
			if key, ok := keys[0].(string); ok {
				return key, true
			}
		}
	}
	return "", false
}

// FallbackIDPrefix starts the ID FallbackID gives a message delivered
// without a message-id.
const FallbackIDPrefix = "rabbitmq-sha256-"

// FallbackID returns the ID a delivery without a message-id gets:
// FallbackIDPrefix followed by 32 hex digits of a SHA-256 over the
// message's topic, key, time, payload and headers, broker-added ones
// (x-death, x-delivery-count, x-first-death-*, x-last-death-*) left out.
// It is the same on every redelivery of the message, through a retry chain
// too, so consumers that deduplicate on Message.ID (package idempotency)
// handle it once. Two messages without ID that are equal in all of these
// get the same ID and are taken for one: producers that may send such
// messages should set message-id.
func FallbackID(m broker.Message) string {
	h := sha256.New()
	var n [8]byte
	field := func(s string) {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field(m.Topic)
	field(m.Key)
	var nanos int64
	if !m.Time.IsZero() {
		nanos = m.Time.UnixNano()
	}
	binary.BigEndian.PutUint64(n[:], uint64(nanos))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(len(m.Payload)))
	h.Write(n[:])
	h.Write(m.Payload)
	keys := make([]string, 0, len(m.Headers))
	for k := range m.Headers {
		if !brokerAdded(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		field(k)
		field(m.Headers[k])
	}
	return FallbackIDPrefix + hex.EncodeToString(h.Sum(nil)[:16])
}

// brokerAdded reports whether header k is one RabbitMQ adds when it
// dead-letters or redelivers a message.
func brokerAdded(k string) bool {
	return k == HeaderDeath || k == HeaderDeliveryCount ||
		strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
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
