package saga

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error of this package and of its backends wraps one
// of them (or an error of the standard library or pgx), so callers test with
// errors.Is.
var (
	// ErrInvalidConfig: an engine, participant or tracker Config field is
	// out of range, or a required argument is nil.
	ErrInvalidConfig = errors.New("saga: invalid config")
	// ErrInvalidDefinition: Define was given a bad name, version or step
	// list (duplicate names, a step without an action, kinds out of order).
	ErrInvalidDefinition = errors.New("saga: invalid definition")
	// ErrUnknownType: Start was given a definition that is not registered
	// with the engine, or an instance names a saga type the engine does not
	// know at all.
	ErrUnknownType = errors.New("saga: unknown saga type")
	// ErrUnregisteredVersion: an instance runs on a definition version that
	// is not registered with the engine. See UnregisteredError.
	ErrUnregisteredVersion = errors.New("saga: definition version not registered")
	// ErrIDConflict: Start was given the ID of an instance of another saga
	// type.
	ErrIDConflict = errors.New("saga: instance ID used by another saga type")
	// ErrNotFound: no instance has the given ID.
	ErrNotFound = errors.New("saga: instance not found")
	// ErrMalformedReply: a reply's saga headers are missing or invalid, or
	// its step's reply hook rejected it.
	ErrMalformedReply = errors.New("saga: malformed reply")
	// ErrMalformedCommand: a command delivered to a participant lacks the
	// saga headers or carries invalid ones.
	ErrMalformedCommand = errors.New("saga: malformed command")
	// ErrFinished: an operator request names an instance that already
	// completed, compensated or was aborted.
	ErrFinished = errors.New("saga: instance already finished")
	// ErrNotParked: retry and skip apply to parked instances only.
	ErrNotParked = errors.New("saga: instance not parked")
	// ErrPastPivot: an instance whose pivot step succeeded can no longer be
	// cancelled: it only moves forward.
	ErrPastPivot = errors.New("saga: instance is past its pivot step")
	// ErrRefused marks a business refusal: a participant's action (or a
	// local step) that says "no" rather than "not now". Refuse wraps an
	// error so that it matches.
	ErrRefused = errors.New("saga: refused")
	// ErrConflict is returned by a Store when an instance changed since it
	// was loaded. The engine then reloads it in a fresh transaction and
	// decides again; callers of the engine never see it.
	ErrConflict = errors.New("saga: instance changed concurrently")
)

// refusal is what Refuse returns.
type refusal struct{ err error }

func (r *refusal) Error() string        { return r.err.Error() }
func (r *refusal) Unwrap() error        { return r.err }
func (r *refusal) Is(target error) bool { return target == ErrRefused }

// Refuse marks err as a business refusal. A participant action or a local
// step returning Refuse(err) fails its step at once: the saga compensates
// (or, after its pivot, parks) without retrying, and a participant replies
// with the failure outcome and err's text as the reason. Any other error is
// transient: a local step is retried with its backoff, a participant's
// delivery is redelivered by the broker. Refuse(nil) returns nil.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrRefused) {
		return err
	}
	return &refusal{err: err}
}

// Refusef is Refuse(fmt.Errorf(format, args...)).
func Refusef(format string, args ...any) error { return Refuse(fmt.Errorf(format, args...)) }

// TypeVersion counts the unfinished instances of one saga type and version.
type TypeVersion struct {
	Type    string
	Version int
	// Instances is the number of unfinished instances.
	Instances int64
	// Example is the ID of one of them.
	Example string
}

// UnregisteredError lists unfinished instances whose definition version the
// engine does not have. It matches ErrUnregisteredVersion.
type UnregisteredError struct {
	Versions []TypeVersion
}

func (e *UnregisteredError) Error() string {
	var b strings.Builder
	b.WriteString("saga: unfinished instances run on definitions that are not registered:")
	for i, v := range e.Versions {
		if i > 0 {
			b.WriteByte(';')
		}
		fmt.Fprintf(&b, " %s version %d (%d instances, e.g. %q)", v.Type, v.Version, v.Instances, v.Example)
	}
	b.WriteString("; register these versions (keep the old definition beside the new one until its instances finish), or cancel the instances")
	return b.String()
}

// Is reports whether target is ErrUnregisteredVersion.
func (e *UnregisteredError) Is(target error) bool { return target == ErrUnregisteredVersion }
