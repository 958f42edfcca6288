package broker

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Adapters wrap them, so callers test with errors.Is.
var (
	// ErrEmptyTopic: a message or subscription has no topic.
	ErrEmptyTopic = errors.New("broker: empty topic")
	// ErrEmptyGroup: a subscription has no consumer group.
	ErrEmptyGroup = errors.New("broker: empty consumer group")
	// ErrNilHandler: Subscribe was given a nil Handler.
	ErrNilHandler = errors.New("broker: nil handler")
	// ErrMessageTooLarge: a message exceeds the adapter's size limit.
	ErrMessageTooLarge = errors.New("broker: message too large")
	// ErrInvalidMessage: a message has a field the destination cannot
	// carry as it is: a name or value longer than the protocol allows, text
	// that is not valid UTF-8 where the protocol or store requires it, too
	// many headers. It is permanent: the same message will never be
	// accepted, so the outbox parks it at once and nothing is sent.
	ErrInvalidMessage = errors.New("broker: invalid message")
	// ErrInvalidSubscription: a subscription setting is out of range.
	ErrInvalidSubscription = errors.New("broker: invalid subscription")
	// ErrClosed: the publisher or subscriber was closed.
	ErrClosed = errors.New("broker: closed")
	// ErrUnavailable: the broker could not be reached, or the connection
	// failed or timed out before the broker answered. Nothing was refused,
	// so the same call may succeed later. A message of a failed Publish
	// whose error wraps it may or may not have been stored: publish it
	// again (consumers deduplicate on Message.ID). Adapters wrap it around
	// their own outage errors, so callers such as the outbox relay need not
	// know each adapter's.
	ErrUnavailable = errors.New("broker: unavailable")
)

// PublishFailure names one message of a Publish call that the broker did not
// accept.
type PublishFailure struct {
	// Index is the message's position in the Publish call's arguments.
	Index int
	// ID is the message ID, as the publisher filled it when it was empty.
	ID  string
	Err error
}

// PublishError is returned by Publish when some messages were accepted and
// others were not. Messages not listed were durably accepted; retrying only the
// failed ones avoids duplicates.
type PublishError struct {
	Failures []PublishFailure
}

func (e *PublishError) Error() string {
	if len(e.Failures) == 1 {
		f := e.Failures[0]
		return fmt.Sprintf("broker: publish of message %d (id %s) failed: %v", f.Index, f.ID, f.Err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "broker: %d messages failed to publish", len(e.Failures))
	for i, f := range e.Failures {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Failures)-3)
			break
		}
		fmt.Fprintf(&b, "; message %d (id %s): %v", f.Index, f.ID, f.Err)
	}
	return b.String()
}

// Unwrap returns the distinct underlying errors, so errors.Is and errors.As
// see through a PublishError.
func (e *PublishError) Unwrap() []error {
	errs := make([]error, 0, len(e.Failures))
	for _, f := range e.Failures {
		errs = append(errs, f.Err)
	}
	return errs
}

// Failed returns the messages of msgs that the error lists, in order. msgs
// must be the slice given to the failed Publish call.
func (e *PublishError) Failed(msgs []Message) []Message {
	out := make([]Message, 0, len(e.Failures))
	for _, f := range e.Failures {
		if f.Index >= 0 && f.Index < len(msgs) {
			out = append(out, msgs[f.Index])
		}
	}
	return out
}
