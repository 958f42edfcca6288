package rabbitmq

import (
	"fmt"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

// AMQP 0-9-1 limits that a message must respect before it is sent. A
// message that breaks one cannot be encoded (amqp091 then closes the whole
// connection) or is refused by the broker with a connection error, or,
// confirmed, can never be decoded by a consumer: Publish rejects it first,
// with an error matching ErrProtocolLimit and broker.ErrInvalidMessage, and
// sends nothing of the call.
const (
	// MaxNameBytes is the length limit of an AMQP short string: the
	// exchange (Message.Topic), the routing key (Message.Key), the
	// message-id (Message.ID), header names, and the values of the headers
	// carried in AMQP properties (type, content-type, correlation-id,
	// content-encoding, reply-to, app-id).
	MaxNameBytes = 255
	// MaxHeaders is the largest number of entries of a message's header
	// table that consumers accept (amqp091 refuses to decode a larger table
	// and closes the connection). The adapter's own wire headers count:
	// a message may carry MaxHeaders-2 headers that do not travel in AMQP
	// properties.
	MaxHeaders = 8192
	// DefaultFrameMax is the frame size limit assumed before a connection
	// negotiated one (RabbitMQ's default frame_max). A message's
	// properties, header table included, travel in one frame and must fit
	// in it; the payload is split over as many frames as it needs.
	DefaultFrameMax = 131072
)

// wireHeadersReserved is the number of header entries the adapter may add
// to a message's table: steadfast-time and steadfast-seq.
const wireHeadersReserved = 2

// ErrProtocolLimit: a message has a field AMQP 0-9-1 cannot carry: a name
// longer than MaxNameBytes, a topic that is not valid UTF-8, more than
// MaxHeaders headers, or properties and headers too large for one frame. It
// wraps broker.ErrInvalidMessage, which the outbox relay treats as
// permanent: the same message is never accepted.
var ErrProtocolLimit = fmt.Errorf("rabbitmq: message exceeds an AMQP protocol limit: %w", broker.ErrInvalidMessage)

// frameOverhead is what a frame adds around its payload: type (1), channel
// (2), size (4) and the frame-end octet (1).
const frameOverhead = 8

// checkLimits checks every message of a Publish call against the AMQP
// limits, frameMax being the connection's negotiated frame size (0: not
// known yet, DefaultFrameMax). The error names the first bad message's
// index and wraps ErrProtocolLimit.
func checkLimits(msgs []broker.Message, frameMax int) error {
	for i := range msgs {
		if err := checkMessage(&msgs[i], frameMax); err != nil {
			return fmt.Errorf("rabbitmq: message %d (id %.64q, topic %.64q): %w", i, msgs[i].ID, msgs[i].Topic, err)
		}
	}
	return nil
}

func shortstr(what, s string) error {
	if len(s) > MaxNameBytes {
		return fmt.Errorf("%w: %s of %d bytes, longer than %d", ErrProtocolLimit, what, len(s), MaxNameBytes)
	}
	return nil
}

// checkMessage checks one message, as toPublishing will map it.
func checkMessage(m *broker.Message, frameMax int) error {
	if frameMax <= 0 {
		frameMax = DefaultFrameMax
	}
	if err := shortstr("topic (exchange name)", m.Topic); err != nil {
		return err
	}
	if !utf8.ValidString(m.Topic) {
		return fmt.Errorf("%w: topic (exchange name) is not valid UTF-8", ErrProtocolLimit)
	}
	if err := shortstr("key (routing key)", m.Key); err != nil {
		return err
	}
	id := m.ID
	if id == "" {
		id = broker.NewID() // filled so by Normalize: only its length counts
	}
	if err := shortstr("ID (message-id)", id); err != nil {
		return err
	}
	// The content header frame: class and weight (4), body size (8),
	// property flags (2), the message-id, the timestamp (8), the delivery
	// mode (1), the header table's length (4), then each property and
	// table entry.
	size := 4 + 8 + 2 + 1 + len(id) + 8 + 1 + 4
	entries := wireHeadersReserved
	// The adapter's wire headers: name, type octet, and value (an int64
	// for steadfast-time, a long string of at most 20 digits for
	// steadfast-seq).
	size += 1 + len(headerTime) + 1 + 8
	size += 1 + len(headerSeq) + 1 + 4 + 20
	for k, v := range m.Headers {
		if v != "" && isPropHeader(k) {
			if len(v) > MaxNameBytes {
				return shortstr(fmt.Sprintf("value of header %q (an AMQP property)", k), v)
			}
			size += 1 + len(v)
			continue
		}
		w := brokerimpl.WireHeader(k)
		if len(w) > MaxNameBytes {
			return shortstr(fmt.Sprintf("header name %.40q", k), w)
		}
		entries++
		size += 1 + len(w) + 1 + 4 + len(v)
	}
	if entries > MaxHeaders {
		return fmt.Errorf("%w: %d headers, at most %d", ErrProtocolLimit, entries-wireHeadersReserved, MaxHeaders-wireHeadersReserved)
	}
	if size > frameMax-frameOverhead {
		return fmt.Errorf("%w: properties and headers take about %d bytes, more than one frame of %d bytes (the connection's frame_max) holds",
			ErrProtocolLimit, size, frameMax)
	}
	return nil
}

// isPropHeader reports whether header k travels in an AMQP property when
// its value is not empty (see prop).
func isPropHeader(k string) bool {
	switch k {
	case broker.HeaderType, broker.HeaderContentType, broker.HeaderCorrelationID, "content-encoding", "reply-to", "app-id":
		return true
	}
	return false
}

// frameMax returns the frame size the connection negotiated, or 0 before
// the first connection.
func (c *Conn) frameMax() int { return int(c.frameSize.Load()) }
