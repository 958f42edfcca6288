package eventsource

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors of this package and of every store wrap them, so
// callers test with errors.Is; the typed errors below carry the details
// (errors.As).
var (
	// ErrConcurrency: a stream did not match an append's ExpectedVersion
	// (another writer appended first). Nothing was stored. The error is a
	// *ConcurrencyError; reload the stream and decide again (Repository
	// does this for you).
	ErrConcurrency = errors.New("eventsource: concurrency conflict")
	// ErrDuplicateEvent: an event ID of an append is already stored, but
	// not as a retry of the same append (another stream, other versions, or
	// only some of the events). Nothing was stored.
	ErrDuplicateEvent = errors.New("eventsource: duplicate event ID")
	// ErrStreamNotFound: the stream has no events.
	ErrStreamNotFound = errors.New("eventsource: stream not found")
	// ErrStreamDeleted: the stream was deleted (tombstoned); it can be
	// neither read nor appended to.
	ErrStreamDeleted = errors.New("eventsource: stream deleted")
	// ErrStreamArchived: the stream was archived; it can be read but not
	// appended to.
	ErrStreamArchived = errors.New("eventsource: stream archived")
	// ErrTruncated: a load needs events that TruncateStream removed, and no
	// snapshot covers them.
	ErrTruncated = errors.New("eventsource: stream truncated")
	// ErrShredded: the stream's payloads were crypto-shredded; its state
	// cannot be rebuilt and it cannot be appended to.
	ErrShredded = errors.New("eventsource: stream shredded")
	// ErrUnknownEvent: a stored event's type or schema version is not
	// registered. The error is an *UnknownEventError naming both.
	ErrUnknownEvent = errors.New("eventsource: unknown event type or version")
	// ErrUndecodable: a stored event's payload (or an upcaster) failed. The
	// error is a *DecodeError.
	ErrUndecodable = errors.New("eventsource: undecodable event")
	// ErrInvalidStreamID: a stream ID is empty, too long, not UTF-8 or
	// holds control characters.
	ErrInvalidStreamID = errors.New("eventsource: invalid stream ID")
	// ErrInvalidEvent: an append or an event is malformed (no events, no
	// type, bad metadata, a stream named twice).
	ErrInvalidEvent = errors.New("eventsource: invalid event")
	// ErrUnregistered: a Go value to append is not of a registered type, or
	// of a superseded schema version.
	ErrUnregistered = errors.New("eventsource: unregistered event type")
	// ErrInvalidRegistry: the registry's check at start-up failed: an
	// upcaster chain has a gap or a cycle, or a version cannot be reached.
	ErrInvalidRegistry = errors.New("eventsource: invalid registry")
	// ErrInvalidConfig: a Config field is out of range.
	ErrInvalidConfig = errors.New("eventsource: invalid config")
	// ErrCheckpointAhead: a global-log checkpoint lies beyond anything the
	// store has assigned, as after restoring an older backup, where reading
	// on would skip the events written since (reset the reader: rebuild its
	// projection); or stored events carry transaction numbers the store has
	// not assigned yet (a table copied from another PostgreSQL cluster),
	// which would hold every reader back for good.
	ErrCheckpointAhead = errors.New("eventsource: checkpoint ahead of the store")
	// ErrUnavailable: the store could not be reached, or the connection
	// failed before it answered. An append that fails with it may or may
	// not have committed: retry it with the same event IDs, which is exact
	// (a committed append is returned, not stored twice).
	ErrUnavailable = errors.New("eventsource: store unavailable")
	// ErrTooManyAttempts: a Repository gave up after its MaxAttempts
	// conflicts. The error also wraps the last *ConcurrencyError.
	ErrTooManyAttempts = errors.New("eventsource: too many attempts")
)

// ConcurrencyError says why an append's expectation failed.
type ConcurrencyError struct {
	StreamID string
	// Expected is what the append expected.
	Expected ExpectedVersion
	// Actual is the stream's version when the conflict was found (0: no
	// events). It may have moved on since.
	Actual int64
	// Reason, when not empty, explains a conflict that Actual does not:
	// "reordered" when the stream already holds events of a transaction
	// numbered after the appending one (see the postgres store: ordering the
	// global log needs the stream's appends in transaction order), or
	// "concurrent" when another transaction stored the same events first.
	Reason string
}

func (e *ConcurrencyError) Error() string {
	s := fmt.Sprintf("eventsource: concurrency conflict on stream %q: expected %v, actual version %d",
		e.StreamID, e.Expected, e.Actual)
	switch e.Reason {
	case "reordered":
		s += " (a transaction numbered after this one appended to it first: retry in a new transaction)"
	case "":
	default:
		s += " (" + e.Reason + ")"
	}
	return s
}

// Is makes a *ConcurrencyError match ErrConcurrency.
func (e *ConcurrencyError) Is(target error) bool { return target == ErrConcurrency }

// UnknownEventError names a stored event that the registry cannot decode
// because its type, or this version of it, is not registered.
type UnknownEventError struct {
	Type          string
	SchemaVersion int
	// StreamID, Version and Position locate the event (zero when unknown).
	StreamID string
	Version  int64
	Position Position
}

func (e *UnknownEventError) Error() string {
	s := fmt.Sprintf("eventsource: unknown event type %q version %d", e.Type, e.SchemaVersion)
	if e.StreamID != "" {
		s += fmt.Sprintf(" (stream %q version %d, position %v)", e.StreamID, e.Version, e.Position)
	}
	return s
}

// Is makes an *UnknownEventError match ErrUnknownEvent.
func (e *UnknownEventError) Is(target error) bool { return target == ErrUnknownEvent }

// DecodeError is a stored event whose payload could not be decoded or
// upcast.
type DecodeError struct {
	Type          string
	SchemaVersion int
	StreamID      string
	Version       int64
	Position      Position
	Err           error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("eventsource: cannot decode event %q version %d (stream %q version %d, position %v): %v",
		e.Type, e.SchemaVersion, e.StreamID, e.Version, e.Position, e.Err)
}

// Unwrap returns the codec's or upcaster's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// Is makes a *DecodeError match ErrUndecodable.
func (e *DecodeError) Is(target error) bool { return target == ErrUndecodable }
