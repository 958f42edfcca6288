package cqrs

import (
	"context"
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/eventsource"
)

// MaxNameBytes is the longest projection name.
const MaxNameBytes = 100

// ID names one version of a projection. Each version has its own read model
// (tables, key prefix) and its own checkpoint; one version of a name is the
// active (serving) one.
type ID struct {
	// Name: 1 to MaxNameBytes of [a-z0-9_], starting with a letter. It
	// appears in table names and keys, so it is kept plain.
	Name string
	// Version: at least 1.
	Version int
}

func (id ID) String() string { return fmt.Sprintf("%s@v%d", id.Name, id.Version) }

// Validate reports a bad name or version with an error wrapping
// ErrInvalidConfig.
func (id ID) Validate() error {
	if id.Name == "" || len(id.Name) > MaxNameBytes {
		return fmt.Errorf("%w: projection name %q: want 1 to %d bytes", ErrInvalidConfig, id.Name, MaxNameBytes)
	}
	for i := 0; i < len(id.Name); i++ {
		c := id.Name[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || c >= '0' && c <= '9' && i > 0) {
			return fmt.Errorf("%w: projection name %q: want [a-z][a-z0-9_]*", ErrInvalidConfig, id.Name)
		}
	}
	if id.Version < 1 {
		return fmt.Errorf("%w: projection %q: version %d < 1", ErrInvalidConfig, id.Name, id.Version)
	}
	return nil
}

// Status is a projection version's state of health.
type Status string

// Statuses.
const (
	// StatusRunning: applying events (or caught up and waiting).
	StatusRunning Status = "running"
	// StatusRetrying: the handler failed on the event after the checkpoint
	// and the Retry policy is retrying it (State.Attempts, State.Error).
	StatusRetrying Status = "retrying"
	// StatusStopped: a poison or undecodable event stopped the projection
	// (State.Error); it applies nothing until Reset.
	StatusStopped Status = "stopped"
)

// State is what a store keeps about a projection version: its checkpoint
// and health. The checkpoint and the counters change only in the
// transaction that applies a batch.
type State struct {
	ID ID
	// Checkpoint is the position after the last applied batch.
	Checkpoint eventsource.Position
	// Status, Error and Attempts describe the last failure at the event
	// after the checkpoint (Attempts 0 and Error "" when healthy).
	Status   Status
	Error    string
	Attempts int
	// Events is the number of events applied; Skipped the number of
	// events skipped (by the Skip policy, or undecodable).
	Events  int64
	Skipped int64
	// Active reports that this version is the serving one of its name.
	Active bool
	// Owner names the instance that holds the lease, when known.
	Owner string
	// Updated is when the state last changed.
	Updated time.Time
}

// SkippedEvent is an event a projection left out, recorded by the store in
// the transaction that moves the checkpoint past it.
type SkippedEvent struct {
	Position eventsource.Position
	StreamID string
	Version  int64
	Type     string
	EventID  string
	Error    string
}

// Commit describes a batch for Lease.Apply: the checked checkpoint move
// From (the stored checkpoint it expects) To, and what to count and record.
type Commit struct {
	From, To eventsource.Position
	// Events is the number of events the batch applies.
	Events int
	// Skipped are recorded (and counted) with the batch.
	Skipped []SkippedEvent
}

// Store is the port of a read-model backend: its transactions, the
// checkpoints kept in them, the lease that makes one instance of a
// projection version active, and the swap between versions. T is what a
// projection's handler writes through (postgres: a transaction; redis: a
// MULTI/EXEC pipeline). cqrs/postgres, cqrs/redis and cqrs/memory implement
// it and pass the suite in cqrs/cqrstest.
type Store[T any] interface {
	// Acquire makes the caller (owner) the one active instance of id, or
	// fails with ErrLocked while another instance holds it. A lease ends
	// with Release, or when its holder dies: the store then hands it to the
	// next Acquire within its documented takeover time.
	Acquire(ctx context.Context, id ID, owner string) (Lease[T], error)
	StateReader
	// Activate makes id the serving version of its name, atomically for
	// readers: the read model of the previous version serves until the
	// moment it commits, id's from then on. views names the read model's
	// tables (stores that serve through views use them; others ignore
	// them). It fails with ErrNotCaughtUp when the serving version's
	// checkpoint is ahead of id's.
	Activate(ctx context.Context, id ID, views []string) error
	// Reset clears a stopped or retrying status and its attempts (after
	// the handler or the registry was fixed), so the next run applies the
	// event after the checkpoint again. It fails with ErrNotFound for a
	// version that never ran.
	Reset(ctx context.Context, id ID) error
}

// StateReader reads a projection version's stored state (ErrNotFound when
// it never ran), and the serving version of a name (0 when none is).
type StateReader interface {
	State(ctx context.Context, id ID) (State, error)
	ActiveVersion(ctx context.Context, name string) (int, error)
}

// Lease is the one active instance's hold on a projection version.
type Lease[T any] interface {
	// State returns the stored state, created at the zero checkpoint when
	// the version is new.
	State(ctx context.Context) (State, error)
	// Apply runs fn and the checkpoint write of c in one transaction (one
	// MULTI/EXEC on Redis): either both commit or neither. The write is
	// checked: when the stored checkpoint is not c.From, nothing commits
	// and the error wraps ErrCheckpointConflict. fn receives live: the
	// position up to which the name's side effects are done (by any
	// version); events after it are live (Batch.Live). A successful Apply
	// sets the status to running and clears the failure. A nil fn moves the
	// checkpoint only. An error of fn is returned as it is, wrapped by
	// nothing.
	Apply(ctx context.Context, c Commit, fn func(ctx context.Context, tx T, live eventsource.Position) error) error
	// Fail records a failure at the event after checkpoint at (checked like
	// Apply) without moving the checkpoint.
	Fail(ctx context.Context, at eventsource.Position, status Status, attempts int, msg string) error
	// Release gives the lease up.
	Release(ctx context.Context) error
}

// HeadReader is implemented by sources that can tell the newest sequence
// number assigned in the global log, for the lag in events.
type HeadReader interface {
	Head(ctx context.Context) (int64, error)
}
