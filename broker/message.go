package broker

import (
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"
)

// Well-known header names. Adapters map the ones their protocol has a native
// field for (RabbitMQ correlation-id, content-type, type) and carry the rest as
// plain headers, so a message round-trips unchanged through every broker.
const (
	HeaderType          = "type"
	HeaderContentType   = "content-type"
	HeaderCorrelationID = "correlation-id"
	HeaderCausationID   = "causation-id"
	HeaderTraceparent   = "traceparent"
	HeaderTracestate    = "tracestate"
)

// ReservedHeaderPrefix starts the name of every header that steadfast
// itself writes: adapters' wire headers (the Kafka record ID, RabbitMQ's
// nanosecond time), dead-letter envelopes (package dlq), event metadata. It
// is the one reserved namespace of the library, and the rule is the same in
// every adapter:
//
//   - an adapter's own wire headers are removed before delivery;
//   - a message header whose name starts with the prefix (a dead-letter
//     envelope, or any header a user chose) is escaped on the wire and
//     arrives unchanged, so no producer can forge what an adapter reads
//     from its own wire headers;
//   - a wire header in the namespace that the adapter did not write
//     (another client's, or a newer version's) is not delivered.
const ReservedHeaderPrefix = "steadfast-"

// DefaultMaxMessageBytes is the size limit Message.Validate applies when a
// caller passes no limit of its own, and the default of every component
// that checks one (the adapters' publishers, the outbox store): 1 MiB less
// 1 KiB, so that a message at the limit also fits, with its record framing
// and the adapter's headers, a Kafka broker left at its default
// message.max.bytes (1 MiB). One default everywhere means a message the
// outbox store accepts is one the publisher accepts too.
const DefaultMaxMessageBytes = 1<<20 - 1024

// SizeLimiter is implemented by a Publisher that rejects messages above a
// size (every steadfast adapter), and by other components that check one
// (the outbox's postgres store): MaxMessageBytes returns the largest
// Message.Size accepted. Components that hold messages for a publisher to
// send later ask it, so that one setting rules: the outbox relay parks a
// row its publisher would refuse without offering it.
type SizeLimiter interface {
	MaxMessageBytes() int
}

// Message is the unit every pattern publishes and consumes.
//
// ID identifies the message across retries and redeliveries; consumers
// deduplicate on it. Key is the ordering unit: messages sharing a non-empty
// Key are delivered in publish order within a consumer group. An empty Key
// means the message has no ordering constraint.
type Message struct {
	// ID is unique and stable across retries. Publishers fill an empty ID
	// with a UUIDv7 (NewID), which sorts by creation time.
	ID string
	// Topic names the destination: a Kafka topic, a RabbitMQ exchange routing
	// key, or a memory broker topic. It must not be empty.
	Topic string
	// Key is the Kafka record key or the RabbitMQ routing key and the unit of
	// ordering everywhere.
	Key string
	// Payload is opaque to the broker.
	Payload []byte
	// Headers carry metadata such as type, content-type, correlation-id,
	// causation-id and traceparent.
	Headers map[string]string
	// Time is when the message was created. Publishers fill a zero Time with
	// the current time. Brokers keep at least millisecond precision. It must
	// lie between MinTime and MaxTime (1970 to 2262: Kafka refuses negative
	// timestamps, and int64 Unix nanoseconds end in 2262), which every
	// adapter carries; Validate refuses other times with ErrInvalidMessage.
	Time time.Time
}

// uuidTextLen is the length of a UUID in its canonical text form.
const uuidTextLen = 36

// NewMessage returns a message for topic with a fresh UUIDv7 ID and the
// current time.
func NewMessage(topic string, payload []byte) Message {
	return Message{ID: NewID(), Topic: topic, Payload: payload, Time: time.Now()}
}

// NewID returns a new UUIDv7 string. It falls back to a random UUIDv4 only if
// the system clock or random source fails, so it never returns an empty ID.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.NewString()
	}
	return id.String()
}

// Header returns the value of header k, or "" when absent.
func (m Message) Header(k string) string { return m.Headers[k] }

// Size is the number of bytes the message occupies on the wire, not counting
// protocol framing: ID, key, payload, and header names and values. An empty
// ID counts as the 36 bytes of the UUID that Normalize fills in.
func (m Message) Size() int {
	id := len(m.ID)
	if id == 0 {
		id = uuidTextLen
	}
	n := id + len(m.Key) + len(m.Payload)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// The range of Message.Time: from the Unix epoch (Kafka timestamps are
// non-negative milliseconds) to the last instant int64 Unix nanoseconds
// can express.
var (
	MinTime = time.Unix(0, 0).UTC()
	MaxTime = time.Unix(0, math.MaxInt64).UTC()
)

// Validate reports why m cannot be published: ErrEmptyTopic,
// ErrMessageTooLarge when Size exceeds maxBytes (maxBytes <= 0 means
// DefaultMaxMessageBytes), or ErrInvalidMessage for a Time outside
// [MinTime, MaxTime].
func (m Message) Validate(maxBytes int) error {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxMessageBytes
	}
	if m.Topic == "" {
		return ErrEmptyTopic
	}
	if !m.Time.IsZero() && (m.Time.Before(MinTime) || m.Time.After(MaxTime)) {
		return fmt.Errorf("%w: time %v outside [%v, %v]", ErrInvalidMessage, m.Time, MinTime, MaxTime)
	}
	if s := m.Size(); s > maxBytes {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrMessageTooLarge, s, maxBytes)
	}
	return nil
}

// Delivery is a message as a subscriber received it, with what the broker
// knows about this delivery.
type Delivery struct {
	Message
	// Attempt is 1 on the first delivery and grows by one on each
	// redelivery the adapter knows of.
	Attempt int
	// Redelivered reports that the message may have been handed to a
	// handler before (Attempt > 1, or the broker's own redelivery flag).
	Redelivered bool
	// Group is the consumer group that received the message.
	Group string
	// Partition is the Kafka partition, or -1 where the broker has none.
	Partition int32
	// Offset is the Kafka offset or the memory broker's sequence number,
	// or -1 where the broker has none.
	Offset int64
	// Queue is the RabbitMQ queue the message was consumed from.
	Queue string
	// DeliveryTag is the RabbitMQ delivery tag, 0 elsewhere.
	DeliveryTag uint64
}
