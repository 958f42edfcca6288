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
// itself writes: adapters' wire headers, dead-letter envelopes, event
// metadata. It is the one reserved namespace of the library. Adapters remove
// their own wire headers before delivery, and a user header that happens to
// start with the prefix round-trips unchanged (escaped on the wire), so no
// producer can forge what an adapter reads from its own headers.
const ReservedHeaderPrefix = "steadfast-"

// DefaultMaxMessageBytes is the size limit Normalize applies when a caller
// passes no limit of its own. It matches Kafka's default message.max.bytes.
const DefaultMaxMessageBytes = 1 << 20

// Message is the unit every pattern publishes and consumes.
//
// ID identifies the message across retries and redeliveries; consumers
// deduplicate on it. Key is the ordering unit: messages sharing a non-empty
// Key are delivered in publish order within a consumer group. An empty Key
// means the message has no ordering constraint.
type Message struct {
	// ID is unique and stable across retries. Normalize fills an empty ID
	// with a UUIDv7, which sorts by creation time.
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
	// Time is when the message was created. Normalize fills a zero Time with
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

// ValidateBatch validates every message of a batch without copying it. The
// error names the first bad message's index, ID and topic and wraps the
// sentinel (ErrEmptyTopic, ErrMessageTooLarge). Adapters that map messages to
// their wire format in one pass call it instead of Normalize, and then fill
// empty IDs and times themselves exactly as Normalize does.
func ValidateBatch(msgs []Message, maxBytes int) error {
	for i := range msgs {
		if err := msgs[i].Validate(maxBytes); err != nil {
			return fmt.Errorf("broker: message %d (id %q, topic %q): %w", i, msgs[i].ID, msgs[i].Topic, err)
		}
	}
	return nil
}

// Normalize validates every message and returns copies with an empty ID
// filled by NewID and a zero Time filled with the current time. Adapters call
// it at the start of Publish, so a batch with one bad message is rejected as a
// whole before anything is sent. The returned error wraps the sentinel
// (ErrEmptyTopic, ErrMessageTooLarge) and names the message's index.
func Normalize(msgs []Message, maxBytes int) ([]Message, error) {
	if err := ValidateBatch(msgs, maxBytes); err != nil {
		return nil, err
	}
	out := make([]Message, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		if m.ID == "" {
			m.ID = NewID()
		}
		if m.Time.IsZero() {
			m.Time = now
		}
		out[i] = m
	}
	return out, nil
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
