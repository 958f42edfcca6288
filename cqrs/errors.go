package cqrs

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors of this package and of its backends wrap them, so
// callers test with errors.Is; PoisonError carries the details of a poison
// event (errors.As).
var (
	// ErrInvalidConfig: a Config or Projection field is out of range, or a
	// required argument is nil.
	ErrInvalidConfig = errors.New("cqrs: invalid config")
	// ErrUnregistered: a command or query of a type (or name) no handler
	// is registered for.
	ErrUnregistered = errors.New("cqrs: no handler registered")
	// ErrDuplicateHandler: a second handler for a command or query type or
	// name.
	ErrDuplicateHandler = errors.New("cqrs: handler already registered")
	// ErrInvalidMessage: a command, query or reply received from the broker
	// is malformed (missing headers, a payload that does not decode).
	ErrInvalidMessage = errors.New("cqrs: invalid message")
	// ErrRemote: the handler of a command or query sent over the broker
	// failed; the error text is the remote handler's. Errors the remote
	// side knows as sentinels of this package (ErrUnregistered,
	// ErrInvalidMessage) are wrapped as well.
	ErrRemote = errors.New("cqrs: remote handler failed")
	// ErrTimeout: a request over the broker got no reply, or a projection
	// did not reach a position, before the timeout. It also wraps
	// context.DeadlineExceeded.
	ErrTimeout = errors.New("cqrs: timed out")
	// ErrCheckpointConflict: a checkpoint write found a stored checkpoint
	// other than the one the batch started from: another instance of the
	// projection applied events meanwhile (it got ahead, or this instance
	// lost its lease). Nothing of the batch was committed.
	ErrCheckpointConflict = errors.New("cqrs: checkpoint conflict")
	// ErrLocked: another instance holds the projection's lease; this one
	// stands by.
	ErrLocked = errors.New("cqrs: projection locked by another instance")
	// ErrLeaseLost: the instance lost its lease (its connection or lease
	// key is gone); it stops applying and stands by.
	ErrLeaseLost = errors.New("cqrs: projection lease lost")
	// ErrPoison: an event the projection's handler fails on, stopped under
	// the Stop policy or after the Retry policy's attempts. The error is a
	// *PoisonError.
	ErrPoison = errors.New("cqrs: poison event")
	// ErrStopped: the projection's status is stopped (a poison event or an
	// undecodable one): it applies nothing until Reset clears the status.
	ErrStopped = errors.New("cqrs: projection stopped")
	// ErrNotCaughtUp: a swap was asked for a version that has not reached
	// the serving version's checkpoint.
	ErrNotCaughtUp = errors.New("cqrs: version not caught up")
	// ErrNotFound: no stored state for the projection or version.
	ErrNotFound = errors.New("cqrs: projection not found")
)

// PoisonError is an event a projection's handler failed on.
type PoisonError struct {
	// Projection is the projection and version.
	Projection ID
	// Position, StreamID, Type identify the event.
	Position string
	StreamID string
	Type     string
	// Attempts is how many times it was applied and failed.
	Attempts int
	// Err is the handler's error.
	Err error
}

func (e *PoisonError) Error() string {
	return fmt.Sprintf("cqrs: projection %s: poison event at %s (stream %q, type %q) after %d attempts: %v",
		e.Projection, e.Position, e.StreamID, e.Type, e.Attempts, e.Err)
}

// Unwrap returns ErrPoison and the handler's error.
func (e *PoisonError) Unwrap() []error { return []error{ErrPoison, e.Err} }

// ErrValidation: a command or query refused by the Validate middleware (its
// Validate method failed). The error wraps Validate's.
var ErrValidation = errors.New("cqrs: validation failed")
