package saga

import (
	"context"
	"encoding/json"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// Tx is the transaction in which a transition of an instance, or a
// participant's handling of a command, commits. Local steps, local
// compensations and participant functions receive it; reach the backend's
// own transaction through the backend package (saga/postgres: TxOf returns
// the pgx.Tx) to write business rows that commit, or roll back, with the
// saga's state.
type Tx interface {
	// AfterCommit registers f to run once the transaction committed, in
	// registration order. It never runs when the transaction (or the
	// savepoint f was registered in) rolled back.
	AfterCommit(f func())
}

// Status is the state of an instance.
type Status string

// Instance states. Completed, compensated and aborted are final.
const (
	// StatusRunning: moving forward through the steps.
	StatusRunning Status = "running"
	// StatusCompensating: undoing completed steps in reverse order.
	StatusCompensating Status = "compensating"
	// StatusCompleted: every step succeeded.
	StatusCompleted Status = "completed"
	// StatusCompensated: a step failed (or the instance was cancelled)
	// and every completed compensatable step was compensated.
	StatusCompensated Status = "compensated"
	// StatusParked: stopped for an operator: a compensation or a
	// retriable step failed past its limit, a pivot's outcome is unknown,
	// or a reply was rejected. Operators retry, skip the step, or cancel
	// (which aborts it).
	StatusParked Status = "parked"
	// StatusAborted: a parked instance an operator cancelled. Nothing more
	// happens to it; the history says where it stood.
	StatusAborted Status = "aborted"
)

// Finished reports whether s is final.
func (s Status) Finished() bool {
	return s == StatusCompleted || s == StatusCompensated || s == StatusAborted
}

// Valid reports whether s is one of the defined states.
func (s Status) Valid() bool {
	switch s {
	case StatusRunning, StatusCompensating, StatusCompleted, StatusCompensated, StatusParked, StatusAborted:
		return true
	}
	return false
}

// Timer names what an instance's step timer is for.
type Timer string

// Step timers.
const (
	TimerNone Timer = ""
	// TimerTimeout fires when the awaited reply is overdue.
	TimerTimeout Timer = "timeout"
	// TimerRetry fires when a failed attempt is due to be retried.
	TimerRetry Timer = "retry"
)

// RequestKind is an operator request.
type RequestKind string

// Operator requests.
const (
	// RequestCancel compensates a running instance that has not passed its
	// pivot, and aborts a parked one.
	RequestCancel RequestKind = "cancel"
	// RequestRetry resumes a parked instance: the step (or compensation)
	// it parked on is tried again, with a fresh attempt count.
	RequestRetry RequestKind = "retry"
	// RequestSkip resumes a parked instance past the step (or
	// compensation) it parked on, as if it had succeeded: for when an
	// operator did the work by hand.
	RequestSkip RequestKind = "skip"
)

// Request is an operator request, recorded on the instance and carried out
// by whichever engine picks the instance up next (at once: requests wake
// the engines).
type Request struct {
	Kind RequestKind
	// Reason is recorded in the history.
	Reason string
}

// Instance is the durable state of one saga instance. Engines read and
// write it through the Store; operators read it (Store.Get, Store.List).
type Instance struct {
	// ID is the caller-supplied instance ID; starting twice with one ID
	// gives one instance.
	ID string
	// Type and Version name the definition the instance runs on, to the
	// end.
	Type    string
	Version int
	Status  Status
	// Step is the index of the current step: the one running, awaited,
	// compensated or parked on. While compensating it counts down; -1 or
	// len(steps) once finished.
	Step int
	// StepName is the current step's name ("" past either end).
	StepName string
	// Attempt counts the attempts of the current step or compensation.
	Attempt int
	// Awaiting is the ID of the command whose reply the instance waits for
	// ("" when none); AwaitingSince is when it was sent.
	Awaiting      string
	AwaitingSince time.Time
	// Timer is the step timer, due at TimerAt.
	Timer   Timer
	TimerAt time.Time
	// Deadline is when the whole saga must be done (zero: none).
	Deadline time.Time
	// WakeAt is when an engine must next look at the instance: the earliest
	// of TimerAt, Deadline and, when a request is pending, the time it was
	// made. Zero when nothing is due. Stores index it.
	WakeAt time.Time
	// PastPivot is true once the pivot succeeded (or a retriable step
	// began): the instance can no longer be compensated.
	PastPivot bool
	// ParkedFrom is the status a parked instance had when it parked.
	ParkedFrom Status
	// Request is a pending operator request ("" when none).
	Request       RequestKind
	RequestReason string
	// Failure is why compensation began, or why the instance parked.
	Failure string
	// Data is the instance data, JSON.
	Data json.RawMessage
	// Trace is the W3C traceparent of the trace the instance belongs to.
	Trace string
	// Seq is the sequence number of the last history event.
	Seq int64
	// Revision counts the instance's committed changes; stores use it for
	// optimistic concurrency.
	Revision  int64
	CreatedAt time.Time
	UpdatedAt time.Time
	// EndedAt is when the instance finished (zero while not).
	EndedAt time.Time
}

// EventKind names a history event.
type EventKind string

// History events.
const (
	EventStarted EventKind = "started"
	// EventStepDone: a local step's action committed, or a success reply
	// was accepted (with EventReply before it).
	EventStepDone EventKind = "step-done"
	// EventCommandSent: a step's command (or compensation command) was
	// written to the outbox. MessageID is the command's ID.
	EventCommandSent EventKind = "command-sent"
	// EventReply: the awaited reply arrived and was applied. Detail is the
	// outcome (and reason); Duration is the time since the command.
	EventReply EventKind = "reply"
	// EventReplyIgnored: a reply that is not the awaited one (late, after a
	// timeout or once compensation began; for an earlier attempt; for a
	// finished instance) was recorded and otherwise ignored.
	EventReplyIgnored EventKind = "reply-ignored"
	// EventReplyRejected: a malformed reply, or one a step's OnReply
	// rejected.
	EventReplyRejected EventKind = "reply-rejected"
	// EventStepFailed: a step failed for good (refused, or out of attempts).
	EventStepFailed EventKind = "step-failed"
	// EventTimeout: the awaited reply did not come in time.
	EventTimeout EventKind = "timeout"
	// EventRetryScheduled: a failed attempt will be retried at the time in
	// Detail.
	EventRetryScheduled EventKind = "retry-scheduled"
	// EventCompensating: compensation began; Detail says why.
	EventCompensating EventKind = "compensating"
	// EventStepCompensated: a step's compensation succeeded (or was
	// skipped by an operator).
	EventStepCompensated EventKind = "step-compensated"
	// EventCompensationFailed: an attempt of a compensation failed.
	EventCompensationFailed EventKind = "compensation-failed"
	EventCompleted          EventKind = "completed"
	EventCompensated        EventKind = "compensated"
	// EventParked: the instance stopped for an operator; Detail says why.
	EventParked EventKind = "parked"
	// EventRequested: an operator request was recorded.
	EventRequested EventKind = "requested"
	// EventResumed: a parked instance was retried.
	EventResumed EventKind = "resumed"
	// EventSkipped: an operator skipped the step or compensation the
	// instance parked on.
	EventSkipped EventKind = "skipped"
	// EventCancelled: the instance was cancelled (by request, or by its
	// deadline) and compensation begins.
	EventCancelled EventKind = "cancelled"
	// EventAborted: a parked instance was cancelled.
	EventAborted EventKind = "aborted"
	// EventRequestIgnored: a request that no longer applied when an engine
	// carried it out (say, a cancel once the pivot had succeeded).
	EventRequestIgnored EventKind = "request-ignored"
	// EventDeadline: the deadline passed after the pivot; the instance
	// carries on.
	EventDeadline EventKind = "deadline"
)

// Event is one entry of an instance's history.
type Event struct {
	// Seq orders the events of an instance, from 1.
	Seq  int64
	At   time.Time
	Kind EventKind
	// Step is the step concerned ("" for whole-saga events).
	Step    string
	Attempt int
	// MessageID is the command sent or the reply received, if any.
	MessageID string
	// Detail is a reason, an outcome or an error.
	Detail string
	// Duration is, for EventReply, the time since the command was sent;
	// for EventStepDone of a local step, how long the action ran.
	Duration time.Duration
}

// Change is what a transition writes: the instance's new state, the events
// it appends to the history, and the messages it enqueues in the store's
// outbox, all in one transaction.
type Change struct {
	// Instance is the new state. For Save, Instance.Revision is the
	// revision it was loaded at; the store writes Revision+1.
	Instance Instance
	// Events are appended to the history, with Seq already set.
	Events []Event
	// Messages go out through the store's outbox when the transaction
	// commits.
	Messages []broker.Message
	// Notify asks the store to wake listening engines after the commit:
	// the instance's WakeAt is close.
	Notify bool
}

// DefinitionKey names a definition version.
type DefinitionKey struct {
	Type    string
	Version int
}

// Query selects instances for Store.List.
type Query struct {
	// Status, when not empty, keeps instances in one of these states.
	Status []Status
	// Type, when not empty, keeps instances of this saga type.
	Type string
	// AfterID pages: only IDs greater than it, in ID order.
	AfterID string
	// Limit caps the result; zero means 100.
	Limit int
}

// StatusCount is the number of instances of one type in one state.
type StatusCount struct {
	Type   string
	Status Status
	Count  int64
}

// Store is the storage port of the orchestrator: instances, their history,
// their timers and the outbox their messages leave through. saga/postgres
// implements it on PostgreSQL and saga/memory in process; both pass the
// suite in saga/sagatest. Engines are its only writers; operators use
// Get, History, List and Request.
//
// Guarantees a Store gives the engine:
//
//   - A StoreTx's writes (Create or Save, the history events, the
//     messages) commit together or not at all.
//   - Save succeeds only if the instance's revision is still the one it was
//     loaded at; otherwise it (or Commit) returns an error wrapping
//     ErrConflict and nothing is written. Of two transactions that loaded
//     one revision, at most one commits.
//   - Events are unique per instance by Seq and by MessageID: a second
//     event with a MessageID already recorded makes Save or Create fail
//     with ErrConflict, so one message is never applied twice.
//   - ClaimDue hands an instance to one caller at a time (PostgreSQL: FOR
//     UPDATE SKIP LOCKED), and a Save of that instance by anybody else
//     waits for, then conflicts with, the claim's commit.
//   - Messages are published at least once after the commit (through the
//     outbox), in order per key.
type Store interface {
	// Begin starts a transaction.
	Begin(ctx context.Context) (StoreTx, error)
	// ClaimDue locks one instance whose WakeAt has passed and whose
	// definition is one of keys, skipping instances claimed elsewhere, and
	// calls fn with it inside the claiming transaction, which it commits
	// when fn returns nil and rolls back otherwise. It reports false when
	// no instance was due.
	ClaimDue(ctx context.Context, keys []DefinitionKey, fn func(ctx context.Context, tx StoreTx, inst Instance) error) (bool, error)
	// NextWake returns the earliest WakeAt of the instances of keys, and
	// false when none has one.
	NextWake(ctx context.Context, keys []DefinitionKey) (time.Time, bool, error)
	// Unfinished counts the unfinished instances by type and version.
	Unfinished(ctx context.Context) ([]TypeVersion, error)
	// Counts counts the unfinished instances by type and status.
	Counts(ctx context.Context) ([]StatusCount, error)

	// Get returns an instance, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Instance, error)
	// History returns up to limit events of an instance with Seq greater
	// than afterSeq, in order (limit <= 0: all).
	History(ctx context.Context, id string, afterSeq int64, limit int) ([]Event, error)
	// List returns instances matching q in ID order.
	List(ctx context.Context, q Query) ([]Instance, error)
	// Request records an operator request on an instance, records an
	// EventRequested, and wakes the engines. It fails with ErrNotFound,
	// ErrFinished, ErrNotParked (retry, skip) or ErrPastPivot (cancel)
	// when the request does not apply, and returns the updated instance.
	Request(ctx context.Context, id string, r Request) (Instance, error)
	// Cleanup deletes up to limit instances that finished before the given
	// time, with their history, and returns how many it deleted.
	Cleanup(ctx context.Context, finishedBefore time.Time, limit int) (int, error)
}

// StoreTx is a Store transaction. It ends with Commit or Rollback;
// Rollback after Commit (or a second Rollback) does nothing and returns
// nil. After a failed Commit the transaction is over: whether it took
// effect may be unknown (a lost connection), which the engine tolerates.
type StoreTx interface {
	Tx
	// Load reads an instance (without locking it) and reports whether an
	// event with messageID is already in its history ("" checks nothing).
	// It fails with ErrNotFound when there is no such instance.
	Load(ctx context.Context, id, messageID string) (inst Instance, seen bool, err error)
	// Create inserts a new instance (Revision 1) with its events and
	// messages. It reports false, writing nothing, when an instance with
	// that ID exists (committed, or being created by a transaction that
	// then commits).
	Create(ctx context.Context, c Change) (bool, error)
	// Save writes a loaded instance's new state; see the Store guarantees.
	Save(ctx context.Context, c Change) error
	// Savepoint runs fn in a nested transaction: what fn wrote, and the
	// AfterCommit functions it registered, are discarded when it returns
	// an error, and the outer transaction stays usable.
	Savepoint(ctx context.Context, fn func(ctx context.Context, tx Tx) error) error
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// Notifier is implemented by a Store that can wake engines at once when an
// instance becomes due soon or an operator request arrives (the postgres
// store: LISTEN/NOTIFY). Engines poll as a fallback.
type Notifier interface {
	// Listen calls wake after each notification until ctx is done (nil)
	// or the channel fails (an error; the engine polls and listens again
	// later). wake must not block.
	Listen(ctx context.Context, wake func()) error
}
