package dlq

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// Inspector is the operations port over one dead-letter destination (a
// Kafka topic, a RabbitMQ queue). Implementations live in the backend
// subpackages (kafkadlq, rabbitdlq) and are what package dlqcli
// drives.
type Inspector interface {
	// List returns the dead letters matching f, oldest failure first,
	// without removing them.
	List(ctx context.Context, f Filter) ([]DeadLetter, error)
	// Replay publishes each dead letter matching f as ReplayMessage makes
	// it, then removes it from the destination; it returns how many were
	// replayed. A dead letter is removed only after its replay was
	// durably published, so a failure part way replays some and leaves the
	// rest (a crash between the two steps can replay one twice, with the
	// same message ID).
	Replay(ctx context.Context, f Filter, opts ReplayOptions) (int, error)
	// Purge deletes the dead letters matching f and returns how many.
	Purge(ctx context.Context, f Filter) (int, error)
}

// Filter selects dead letters. The zero Filter selects every one.
type Filter struct {
	// IDs selects dead letters whose original message ID is in the list.
	// Empty: any ID.
	IDs []string
	// From and To select dead letters whose last failure is at or after
	// From and before To. Zero: unbounded. A dead letter without an
	// envelope is judged by its message time.
	From, To time.Time
	// Limit caps the number of dead letters selected, oldest first. Zero:
	// no limit.
	Limit int
}

// All reports whether f selects every dead letter.
func (f Filter) All() bool {
	return len(f.IDs) == 0 && f.From.IsZero() && f.To.IsZero() && f.Limit == 0
}

// Validate reports a negative Limit or an empty time range, wrapping
// ErrInvalidConfig.
func (f Filter) Validate() error {
	switch {
	case f.Limit < 0:
		return fmt.Errorf("%w: Filter.Limit %d < 0", ErrInvalidConfig, f.Limit)
	case !f.From.IsZero() && !f.To.IsZero() && !f.To.After(f.From):
		return fmt.Errorf("%w: Filter: To %v is not after From %v", ErrInvalidConfig, f.To, f.From)
	}
	return nil
}

// Match reports whether dl matches f's IDs and time range (Limit is
// applied by Select).
func (f Filter) Match(dl DeadLetter) bool {
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, dl.ID()) {
		return false
	}
	t := dl.FailedAt()
	if !f.From.IsZero() && t.Before(f.From) {
		return false
	}
	if !f.To.IsZero() && !t.Before(f.To) {
		return false
	}
	return true
}

// Select returns the dead letters of dls that match f, at most f.Limit,
// in the order given.
func (f Filter) Select(dls []DeadLetter) []DeadLetter {
	var out []DeadLetter
	for _, dl := range dls {
		if f.Limit > 0 && len(out) == f.Limit {
			break
		}
		if f.Match(dl) {
			out = append(out, dl)
		}
	}
	return out
}

// DeadLetter is one message in a dead-letter destination.
type DeadLetter struct {
	// Message is the dead letter as stored: the original payload and
	// headers plus the envelope headers.
	Message broker.Message
	// Envelope is the decoded failure record. For a message without one
	// (EnvelopeErr set) it holds what the backend could tell, such as the
	// original topic from RabbitMQ's x-death history.
	Envelope Envelope
	// EnvelopeErr says why the envelope headers could not be read, or is
	// nil.
	EnvelopeErr error
	// Position locates the dead letter in its destination:
	// "partition/offset" for Kafka, the 1-based queue position at the time
	// of reading for RabbitMQ.
	Position string
}

// ID is the original message ID.
func (dl DeadLetter) ID() string {
	if dl.Envelope.ID != "" {
		return dl.Envelope.ID
	}
	return dl.Message.ID
}

// FailedAt is the time of the last failure, or the message time when the
// envelope has none.
func (dl DeadLetter) FailedAt() time.Time {
	if !dl.Envelope.LastFailure.IsZero() {
		return dl.Envelope.LastFailure
	}
	return dl.Message.Time
}

// NewDeadLetter decodes the envelope of a message read from a dead-letter
// destination.
func NewDeadLetter(m broker.Message, position string) DeadLetter {
	env, err := ParseEnvelope(m.Headers)
	if err != nil {
		env = Envelope{ID: m.ID, Partition: -1, Offset: -1}
	}
	return DeadLetter{Message: m, Envelope: env, EnvelopeErr: err, Position: position}
}

// ReplayOptions tune Inspector.Replay.
type ReplayOptions struct {
	// Topic, when set, replays to this topic instead of each dead letter's
	// original topic.
	Topic string
}

// ReplayMessage returns the message that replays dl: the original ID,
// topic (or opts.Topic), key, payload, time and headers, without the
// envelope, so the consumer sees it with attempts counted from 1 again,
// plus HeaderReplayedAt (now) and HeaderReplays (one more than before). It
// returns an error wrapping ErrNoDestination when the original topic is
// unknown and opts.Topic is empty, and one wrapping ErrIncomplete when dl
// lacks its original payload.
func ReplayMessage(dl DeadLetter, opts ReplayOptions, now time.Time) (broker.Message, error) {
	if dl.EnvelopeErr == nil && (dl.Envelope.PayloadOmitted || dl.Envelope.HeadersOmitted) {
		return broker.Message{}, fmt.Errorf("%w: dead letter %s at %s lacks its original payload (the message of %d bytes did not fit the size limit with its envelope)",
			ErrIncomplete, dl.ID(), dl.Position, dl.Envelope.OriginalSize)
	}
	topic := opts.Topic
	if topic == "" {
		topic = dl.Envelope.Topic
	}
	if topic == "" {
		return broker.Message{}, fmt.Errorf("%w: dead letter %s at %s has no original topic", ErrNoDestination, dl.ID(), dl.Position)
	}
	key, t := dl.Message.Key, dl.Message.Time
	if dl.EnvelopeErr == nil {
		key = dl.Envelope.Key
		if !dl.Envelope.Time.IsZero() {
			t = dl.Envelope.Time
		}
	}
	h := Strip(dl.Message.Headers)
	if h == nil {
		h = make(map[string]string, 2)
	}
	replays, _ := strconv.Atoi(h[HeaderReplays])
	h[HeaderReplays] = strconv.Itoa(max(replays, 0) + 1)
	h[HeaderReplayedAt] = formatTime(now)
	return broker.Message{ID: dl.ID(), Topic: topic, Key: key, Payload: dl.Message.Payload, Headers: h, Time: t}, nil
}
