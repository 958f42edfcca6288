package saga

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
)

// Kind says what a step's failure means for the steps before it.
//
// A definition's steps come in this order: compensatable steps, at most one
// pivot, then retriable steps. Before the pivot succeeded, a failure undoes
// the completed steps (their compensations, in reverse order); once the
// pivot succeeded (or a retriable step started, when there is no pivot), the
// saga only moves forward: a retriable step is retried and, past its limit,
// the instance is parked for an operator, never compensated.
type Kind int

const (
	// Compensatable steps can be undone by their compensation (optional:
	// a step with nothing to undo, such as a validation, has none).
	Compensatable Kind = iota
	// Pivot is the go/no-go step: if it fails, the compensatable steps
	// before it are compensated; once it succeeded, the saga can only
	// complete. It has no compensation.
	Pivot
	// Retriable steps come after the pivot and are retried until they
	// succeed (or the instance parks); they have no compensation.
	Retriable
)

func (k Kind) String() string {
	switch k {
	case Compensatable:
		return "compensatable"
	case Pivot:
		return "pivot"
	case Retriable:
		return "retriable"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Defaults for Step fields left zero.
const (
	// DefaultStepTimeout is how long a command step (or compensation) waits
	// for its reply before the attempt counts as failed, and how long a
	// local step's action may run.
	DefaultStepTimeout = 30 * time.Second
	// DefaultStepAttempts is Retry.MaxAttempts of compensatable and pivot
	// steps: one try and two retries after a timeout or a transient error.
	DefaultStepAttempts = 3
	// DefaultRetriableAttempts is Retry.MaxAttempts of retriable steps.
	DefaultRetriableAttempts = 20
	// DefaultCompensationAttempts is CompensationRetry.MaxAttempts: after
	// that many failed attempts of one compensation the instance is parked.
	DefaultCompensationAttempts = 10
)

// Retry bounds the attempts of a step or a compensation and spaces them.
type Retry struct {
	// MaxAttempts is the number of attempts, the first included, before the
	// step counts as failed (compensatable and pivot steps: the saga
	// compensates, or parks when a pivot's outcome is unknown) or the
	// instance parks (retriable steps, compensations). Zero takes the
	// default of the step's kind (DefaultStepAttempts,
	// DefaultRetriableAttempts, DefaultCompensationAttempts); negative means
	// no limit.
	MaxAttempts int
	// Backoff spaces the attempts: the wait after the n-th failed attempt is
	// Backoff.Delay(n). The zero value waits 100ms, 200ms, ... up to 30s.
	// A timed-out attempt is retried at once: its timeout was the wait.
	Backoff broker.Backoff
}

// Step is one step of a saga over data of type D.
//
// A step is local (Action: runs inside the transaction that records the
// transition, so it takes effect exactly once) or remote (Command: a message
// to a participant, sent through the store's outbox in the same
// transaction, answered by a correlated reply). Exactly one of Action and
// Command must be set. A compensatable step may have a local Compensation or
// a CompensationCommand.
//
// Every function receives the instance's data; changes a function makes to
// it are saved with the transition when the function returns nil, and
// discarded otherwise. Functions must be deterministic enough to be run
// again: a transition that loses a race with another engine is rolled back
// and decided again on the reloaded instance.
type Step[D any] struct {
	// Name identifies the step in commands, replies, history and metrics.
	// Required, unique within the definition.
	Name string
	// Kind is Compensatable (the zero value), Pivot or Retriable.
	Kind Kind

	// Action is a local step: it runs in the transition's transaction (use
	// the backend's accessor, e.g. saga/postgres TxOf, to write through it).
	// Returning an error rolls back what it wrote; Refuse(err) fails the
	// step at once, any other error is retried per Retry.
	Action func(ctx context.Context, tx Tx, data *D) error
	// Command builds the message a remote step sends. Topic is required;
	// an empty Key becomes the instance ID (so an instance's messages keep
	// their order); ID, correlation, causation, trace and the saga headers
	// are set by the engine. Returning an error counts as a failed attempt
	// (Refuse(err) fails the step at once).
	Command func(ctx context.Context, data *D) (broker.Message, error)
	// OnReply, when set, is called with a successful reply, to keep what it
	// carries in data (a payment ID, a tracking number). An error rejects
	// the reply: the instance is parked with the reason, since the
	// participant did act and nothing can be assumed about its answer.
	OnReply func(ctx context.Context, data *D, r Reply) error

	// Compensation undoes a completed compensatable step locally, in the
	// transition's transaction. An error is retried per CompensationRetry.
	Compensation func(ctx context.Context, tx Tx, data *D) error
	// CompensationCommand builds the message that asks the participant to
	// undo the step. It is also sent when the step's own outcome is unknown
	// (its reply timed out, or the saga was cancelled while waiting), so
	// the participant must treat a compensation of an action it never
	// performed as done (a null compensation) and must not perform the
	// action if it arrives later; Participant does both.
	CompensationCommand func(ctx context.Context, data *D) (broker.Message, error)

	// Timeout bounds the wait for a reply to one attempt of Command (and
	// the run of Action). Zero means DefaultStepTimeout; negative means no
	// timeout (then only the saga's deadline or a cancellation ends the
	// wait).
	Timeout time.Duration
	// Retry bounds and spaces the step's attempts.
	Retry Retry
	// CompensationTimeout is Timeout for the compensation. Zero means
	// DefaultStepTimeout; negative means none.
	CompensationTimeout time.Duration
	// CompensationRetry bounds and spaces the compensation's attempts;
	// past MaxAttempts (default DefaultCompensationAttempts) the instance
	// is parked.
	CompensationRetry Retry
}

// StepInfo describes a step of a registered definition.
type StepInfo struct {
	Name string
	Kind Kind
	// Local is true for a step with an Action, false for one with a
	// Command.
	Local bool
	// Compensation is "local", "command" or "" (none).
	Compensation string
	// Timeout and MaxAttempts are the effective values (defaults applied;
	// zero Timeout: none; negative MaxAttempts: no limit).
	Timeout     time.Duration
	MaxAttempts int
}

// Definition is a validated, versioned saga over data of type D. Create it
// with Define; register it with Engine.Register; start instances with
// Start. A Definition is immutable and safe for concurrent use.
type Definition[D any] struct {
	d *definition
}

// AnyDefinition is a Definition of any data type, as Engine.Register takes
// it.
type AnyDefinition interface {
	Name() string
	Version() int
	compiled() *definition
}

var _ AnyDefinition = (*Definition[struct{}])(nil)

// Define validates a saga definition named name at version (>= 1) with the
// given steps, in order. The instance data D is stored as JSON: it must
// survive json.Marshal and json.Unmarshal. Errors wrap
// ErrInvalidDefinition.
//
// Versions: an instance runs on the definition version it started with, to
// the end. To change a saga, define version N+1 with the same name and
// register it beside version N; start new instances with the new
// definition, and drop version N once its instances finished (Engine.Check
// reports those that have not).
func Define[D any](name string, version int, steps ...Step[D]) (*Definition[D], error) {
	bad := func(format string, args ...any) (*Definition[D], error) {
		return nil, fmt.Errorf("%w: %s version %d: %s", ErrInvalidDefinition, name, version, fmt.Sprintf(format, args...))
	}
	if err := checkName("saga name", name); err != nil {
		return bad("%v", err)
	}
	if version < 1 {
		return bad("version must be at least 1")
	}
	if len(steps) == 0 {
		return bad("no steps")
	}
	d := &definition{name: name, version: version, index: make(map[string]int, len(steps))}
	d.newData = func() any { return new(D) }
	d.decode = func(b []byte) (any, error) {
		v := new(D)
		if len(b) > 0 {
			if err := json.Unmarshal(b, v); err != nil {
				return nil, err
			}
		}
		return v, nil
	}
	d.encode = func(v any) ([]byte, error) { return json.Marshal(v) }
	seenPivot, seenRetriable := false, false
	for i, s := range steps {
		if err := checkName("step name", s.Name); err != nil {
			return bad("step %d: %v", i, err)
		}
		if _, dup := d.index[s.Name]; dup {
			return bad("step name %q used twice", s.Name)
		}
		if (s.Action == nil) == (s.Command == nil) {
			return bad("step %q: set exactly one of Action and Command", s.Name)
		}
		if s.Compensation != nil && s.CompensationCommand != nil {
			return bad("step %q: set at most one of Compensation and CompensationCommand", s.Name)
		}
		if s.OnReply != nil && s.Command == nil {
			return bad("step %q: OnReply needs a Command", s.Name)
		}
		switch s.Kind {
		case Compensatable:
			if seenPivot || seenRetriable {
				return bad("compensatable step %q comes after the pivot or a retriable step", s.Name)
			}
		case Pivot:
			if seenPivot {
				return bad("second pivot %q", s.Name)
			}
			if seenRetriable {
				return bad("pivot %q comes after a retriable step", s.Name)
			}
			seenPivot = true
		case Retriable:
			seenRetriable = true
		default:
			return bad("step %q: unknown kind %d", s.Name, int(s.Kind))
		}
		if s.Kind != Compensatable && (s.Compensation != nil || s.CompensationCommand != nil) {
			return bad("%s step %q cannot have a compensation", s.Kind, s.Name)
		}
		if err := s.Retry.Backoff.Validate(); err != nil {
			return bad("step %q: Retry: %v", s.Name, err)
		}
		if err := s.CompensationRetry.Backoff.Validate(); err != nil {
			return bad("step %q: CompensationRetry: %v", s.Name, err)
		}
		d.index[s.Name] = i
		d.steps = append(d.steps, compileStep(i, s))
	}
	return &Definition[D]{d: d}, nil
}

// checkName accepts 1 to 200 bytes of printable UTF-8 without spaces at the
// ends: names travel in headers and appear in metrics and diagrams.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty %s", what)
	case len(s) > 200:
		return fmt.Errorf("%s longer than 200 bytes", what)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%s %q has a non-printable character", what, s)
		}
	}
	if s[0] == ' ' || s[len(s)-1] == ' ' {
		return fmt.Errorf("%s %q starts or ends with a space", what, s)
	}
	return nil
}

// Name returns the saga type name.
func (d *Definition[D]) Name() string { return d.d.name }

// Version returns the definition version.
func (d *Definition[D]) Version() int { return d.d.version }

// Deadline returns the whole-saga deadline new instances get (0: none).
func (d *Definition[D]) Deadline() time.Duration { return d.d.deadline }

// WithDeadline returns a copy of d whose instances must complete within
// deadline of their start: when it passes, an instance that has not passed
// its pivot is compensated as if cancelled (an instance past its pivot
// carries on; the event is recorded). Zero or negative means no deadline.
// Start can override it per instance.
func (d *Definition[D]) WithDeadline(deadline time.Duration) *Definition[D] {
	c := *d.d
	c.deadline = max(deadline, 0)
	return &Definition[D]{d: &c}
}

// Steps describes the steps in order.
func (d *Definition[D]) Steps() []StepInfo { return d.d.info() }

func (d *Definition[D]) compiled() *definition { return d.d }

// definition is a Definition with its data type erased: data is an any
// holding a *D.
type definition struct {
	name     string
	version  int
	deadline time.Duration
	steps    []*stepDef
	index    map[string]int
	newData  func() any
	decode   func([]byte) (any, error)
	encode   func(any) ([]byte, error)
}

func (d *definition) info() []StepInfo {
	out := make([]StepInfo, len(d.steps))
	for i, s := range d.steps {
		out[i] = StepInfo{Name: s.name, Kind: s.kind, Local: s.local != nil,
			Timeout: max(s.timeout, 0), MaxAttempts: s.retry.MaxAttempts}
		switch {
		case s.compLocal != nil:
			out[i].Compensation = "local"
		case s.compSend != nil:
			out[i].Compensation = "command"
		}
	}
	return out
}

// pivotIndex returns the index of the pivot, or -1.
func (d *definition) pivotIndex() int {
	for i, s := range d.steps {
		if s.kind == Pivot {
			return i
		}
	}
	return -1
}

type stepDef struct {
	index       int
	name        string
	kind        Kind
	local       func(ctx context.Context, tx Tx, data any) error
	send        func(ctx context.Context, data any) (broker.Message, error)
	onReply     func(ctx context.Context, data any, r Reply) error
	compLocal   func(ctx context.Context, tx Tx, data any) error
	compSend    func(ctx context.Context, data any) (broker.Message, error)
	timeout     time.Duration // <0: none
	compTimeout time.Duration // <0: none
	retry       Retry         // MaxAttempts: >0 or <0 (no limit)
	compRetry   Retry
}

func (s *stepDef) hasCompensation() bool { return s.compLocal != nil || s.compSend != nil }

func compileStep[D any](i int, s Step[D]) *stepDef {
	sd := &stepDef{index: i, name: s.Name, kind: s.Kind,
		timeout: s.Timeout, compTimeout: s.CompensationTimeout, retry: s.Retry, compRetry: s.CompensationRetry}
	if sd.timeout == 0 {
		sd.timeout = DefaultStepTimeout
	}
	if sd.compTimeout == 0 {
		sd.compTimeout = DefaultStepTimeout
	}
	if sd.retry.MaxAttempts == 0 {
		sd.retry.MaxAttempts = DefaultStepAttempts
		if s.Kind == Retriable {
			sd.retry.MaxAttempts = DefaultRetriableAttempts
		}
	}
	if sd.compRetry.MaxAttempts == 0 {
		sd.compRetry.MaxAttempts = DefaultCompensationAttempts
	}
	if f := s.Action; f != nil {
		sd.local = func(ctx context.Context, tx Tx, data any) error { return f(ctx, tx, data.(*D)) }
	}
	if f := s.Command; f != nil {
		sd.send = func(ctx context.Context, data any) (broker.Message, error) { return f(ctx, data.(*D)) }
	}
	if f := s.OnReply; f != nil {
		sd.onReply = func(ctx context.Context, data any, r Reply) error { return f(ctx, data.(*D), r) }
	}
	if f := s.Compensation; f != nil {
		sd.compLocal = func(ctx context.Context, tx Tx, data any) error { return f(ctx, tx, data.(*D)) }
	}
	if f := s.CompensationCommand; f != nil {
		sd.compSend = func(ctx context.Context, data any) (broker.Message, error) { return f(ctx, data.(*D)) }
	}
	return sd
}

// exhausted reports whether attempts used up r (MaxAttempts < 0: never).
func (r Retry) exhausted(attempts int) bool { return r.MaxAttempts > 0 && attempts >= r.MaxAttempts }
