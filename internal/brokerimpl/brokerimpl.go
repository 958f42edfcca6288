// Package brokerimpl is the implementers' side of package broker: the
// checks and conversions every adapter (broker/memory, broker/kafka,
// broker/rabbitmq) and every component that writes messages on a broker's
// behalf (the outbox store, the dead-letter consumer) applies the same way,
// so that each backend rejects bad input with the same errors and fills
// missing fields alike. Users of the broker ports never call it, which is
// why it is not part of package broker's API, as database/sql/driver is
// kept apart from database/sql.
package brokerimpl

import (
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// CheckSubscribe validates the arguments of a Subscribe call. Adapters
// call it first so every backend rejects bad input with the same errors:
// broker.ErrNilHandler, or the error of broker.Subscription.Validate
// wrapped with the topic and group.
func CheckSubscribe(sub broker.Subscription, h broker.Handler) error {
	if h == nil {
		return broker.ErrNilHandler
	}
	if err := sub.Validate(); err != nil {
		return fmt.Errorf("broker: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
	}
	return nil
}

// WithDefaults returns sub with zero fields set to their defaults
// (Concurrency: broker.DefaultConcurrency).
func WithDefaults(sub broker.Subscription) broker.Subscription {
	if sub.Concurrency == 0 {
		sub.Concurrency = broker.DefaultConcurrency
	}
	return sub
}

// ValidateBatch validates every message of a batch without copying it. The
// error names the first bad message's index, ID and topic and wraps the
// sentinel (broker.ErrEmptyTopic, broker.ErrMessageTooLarge). Adapters that
// map messages to their wire format in one pass call it instead of
// Normalize, and then fill empty IDs and times themselves exactly as
// Normalize does.
func ValidateBatch(msgs []broker.Message, maxBytes int) error {
	for i := range msgs {
		if err := msgs[i].Validate(maxBytes); err != nil {
			return fmt.Errorf("broker: message %d (id %q, topic %q): %w", i, msgs[i].ID, msgs[i].Topic, err)
		}
	}
	return nil
}

// Normalize validates every message and returns copies with an empty ID
// filled by broker.NewID and a zero Time filled with the current time.
// Adapters call it at the start of Publish, so a batch with one bad message
// is rejected as a whole before anything is sent. The returned error wraps
// the sentinel (broker.ErrEmptyTopic, broker.ErrMessageTooLarge) and names
// the message's index.
func Normalize(msgs []broker.Message, maxBytes int) ([]broker.Message, error) {
	if err := ValidateBatch(msgs, maxBytes); err != nil {
		return nil, err
	}
	out := make([]broker.Message, len(msgs))
	now := time.Now()
	for i, m := range msgs {
		if m.ID == "" {
			m.ID = broker.NewID()
		}
		if m.Time.IsZero() {
			m.Time = now
		}
		out[i] = m
	}
	return out, nil
}
