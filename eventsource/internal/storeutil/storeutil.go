// Package storeutil holds what the event stores of this module share and
// users of eventsource never need.
package storeutil

import (
	"errors"
	"fmt"

	"github.com/steadfast-go/steadfast/eventsource"
)

// DuplicateMismatch checks the stored record of the j-th event of an append
// that is being retried: it must exist, belong to the append's stream, and
// sit at the version the j-th event of a committed run of the append would
// have: consecutive from a first version that satisfies the append's
// expectation. first is the stored record of event 0 (nil when not found).
// It returns "" when the record fits, else why not.
func DuplicateMismatch(a *eventsource.StreamAppend, j int, rec, first *eventsource.Record) string {
	id := a.Events[j].ID
	switch {
	case rec == nil || first == nil:
		return fmt.Sprintf("stream %q: some events of the append are stored (e.g. event %d, ID %q is not), so it is not a retry",
			a.StreamID, j, id)
	case rec.StreamID != a.StreamID:
		return fmt.Sprintf("event ID %q is stored in stream %q, not %q", id, rec.StreamID, a.StreamID)
	case rec.Version != first.Version+int64(j):
		return fmt.Sprintf("stream %q: event ID %q is stored at version %d, not in the order of this append", a.StreamID, id, rec.Version)
	case !a.Expected.Matches(first.Version - 1):
		return fmt.Sprintf("stream %q: the events are stored from version %d, which does not follow the expected version %v",
			a.StreamID, first.Version, a.Expected)
	}
	return ""
}

// DeleteExpectation returns the expectation of the tombstone append of
// DeleteStream: a stream must exist to be deleted, so AnyVersion becomes
// StreamExists, and NoStream is refused.
func DeleteExpectation(streamID string, expected eventsource.ExpectedVersion) (eventsource.ExpectedVersion, error) {
	switch expected {
	case eventsource.NoStream:
		return 0, fmt.Errorf("%w: delete stream %q expecting no stream: only a stream with events can be deleted", eventsource.ErrInvalidEvent, streamID)
	case eventsource.AnyVersion:
		return eventsource.StreamExists, nil
	}
	return expected, nil
}

// DeleteError maps the error of a tombstone append: a conflict with a
// stream that has no events is ErrStreamNotFound, and a conflict reports the
// caller's expectation.
func DeleteError(err error, expected eventsource.ExpectedVersion) error {
	var ce *eventsource.ConcurrencyError
	if !errors.As(err, &ce) {
		return err
	}
	if ce.Actual == 0 {
		return fmt.Errorf("%w: %q", eventsource.ErrStreamNotFound, ce.StreamID)
	}
	c := *ce
	c.Expected = expected
	return &c
}

// Tombstone is the event DeleteStream appends.
func Tombstone() eventsource.EventData {
	return eventsource.EventData{Type: eventsource.TypeStreamDeleted, SchemaVersion: 1}
}
