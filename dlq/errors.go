package dlq

import (
	"errors"
	"fmt"
)

// Sentinel errors. Errors returned by this package and its subpackages wrap
// them, so callers test with errors.Is.
var (
	// ErrPermanent marks an error that retrying cannot fix. Permanent wraps
	// an error so that it matches ErrPermanent; the default classifier sends
	// such failures to the dead-letter destination without retrying.
	ErrPermanent = errors.New("dlq: permanent error")
	// ErrInvalidConfig: a Config, Policy or Filter field is missing or out
	// of range.
	ErrInvalidConfig = errors.New("dlq: invalid config")
	// ErrNoEnvelope: a message carries no dead-letter envelope headers.
	ErrNoEnvelope = errors.New("dlq: no envelope")
	// ErrMalformedEnvelope: a message's envelope headers cannot be decoded.
	ErrMalformedEnvelope = errors.New("dlq: malformed envelope")
	// ErrNoDestination: a dead letter cannot be replayed because its
	// original topic is unknown and no replay topic was given.
	ErrNoDestination = errors.New("dlq: replay destination unknown")
	// ErrIncomplete: a dead letter cannot be replayed because it lacks
	// its original payload (Envelope.PayloadOmitted): the message with its
	// envelope would not have fitted the publisher's size limit.
	ErrIncomplete = errors.New("dlq: dead letter incomplete")
	// ErrNotFound: the dead-letter destination (Kafka topic, RabbitMQ
	// queue) does not exist.
	ErrNotFound = errors.New("dlq: dead-letter destination not found")
)

// permanentError is what Permanent returns.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }
func (e *permanentError) Is(target error) bool {
	return target == ErrPermanent
}

// Permanent marks err as permanent: retrying cannot fix it (a payload that
// does not decode, a message that fails validation). A handler returns
// Permanent(err) to send its message to the dead-letter destination at once,
// without retries. The result matches ErrPermanent and, through errors.Is and
// errors.As, err itself; its text is err's. Permanent(nil) returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrPermanent) {
		return err
	}
	return &permanentError{err: err}
}

// Permanentf is Permanent(fmt.Errorf(format, args...)).
func Permanentf(format string, args ...any) error {
	return Permanent(fmt.Errorf(format, args...))
}

// Class says what a failure means for retries.
type Class int

const (
	// ClassTransient failures may succeed when tried again: the message is
	// retried until Policy.MaxAttempts attempts failed, then dead-lettered.
	ClassTransient Class = iota
	// ClassPermanent failures cannot succeed by retrying: the message is
	// dead-lettered after this attempt.
	ClassPermanent
)

// String returns "transient" or "permanent", as written in the
// HeaderErrorClass envelope header.
func (c Class) String() string {
	switch c {
	case ClassTransient:
		return "transient"
	case ClassPermanent:
		return "permanent"
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// ParseClass parses the text form of a Class.
func ParseClass(s string) (Class, error) {
	switch s {
	case "transient":
		return ClassTransient, nil
	case "permanent":
		return ClassPermanent, nil
	}
	return 0, fmt.Errorf("%w: unknown error class %q", ErrMalformedEnvelope, s)
}

// Classifier decides the Class of a handler error. Custom classifiers
// inspect the error with errors.Is and errors.As and usually end by calling
// Classify for everything they do not recognise:
//
//	func(err error) dlq.Class {
//		var ve *ValidationError
//		if errors.As(err, &ve) || errors.Is(err, sql.ErrNoRows) {
//			return dlq.ClassPermanent
//		}
//		return dlq.Classify(err)
//	}
type Classifier func(err error) Class

// Classify is the default Classifier: errors matching ErrPermanent (made by
// Permanent) are ClassPermanent, every other error is ClassTransient.
func Classify(err error) Class {
	if errors.Is(err, ErrPermanent) {
		return ClassPermanent
	}
	return ClassTransient
}
