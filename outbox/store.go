package outbox

import (
	"context"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// Store is the storage port of the outbox: the table that business
// transactions write messages into and that the Relay drains. Package
// outbox/postgres implements it on PostgreSQL; any implementation must pass
// the suite in outbox/outboxtest.
//
// Rows of one Message.Key form a queue ordered by Record.ID. A Store gives
// these guarantees, which the Relay's per-key order rests on:
//
//   - A claimed row stays claimed (invisible to every other Claim) until its
//     Claim is completed or released, or until the claiming session dies
//     (process crash, lost connection) or the store ends the claim after its
//     deadline (see ClaimDeadline), in which case the rows are released
//     unchanged.
//   - A key is claimed by at most one Claim at a time: while any row of key K
//     is claimed, no other Claim returns rows of K. Rows with an empty key
//     have no order and are claimed independently.
//   - A Claim returns, for each key, a run of consecutive rows starting at the
//     key's earliest unpublished row, in ID order. A key is skipped entirely
//     while it is blocked: it has a pending row whose retry time has not come
//     (a failed row waiting for its backoff), or, when DeadBlocksKey is set, a
//     parked (dead) row. Rows that became visible late (a transaction that
//     committed after others with higher IDs) are never skipped: they become
//     the head of their key when they commit.
type Store interface {
	// Claim locks up to req.Limit publishable rows and returns them in ID
	// order. A Claim with no records must still be released (Release is cheap
	// then). Claim does not wait for rows to appear.
	Claim(ctx context.Context, req ClaimRequest) (Claim, error)

	// Stats reports the backlog: rows waiting to be published and parked
	// rows.
	Stats(ctx context.Context) (Stats, error)

	// Cleanup deletes up to limit published rows that were published before
	// the given time and returns how many it deleted. Callers loop while it
	// returns limit.
	Cleanup(ctx context.Context, publishedBefore time.Time, limit int) (int, error)

	// Parked lists parked (dead) rows in ID order, starting after q.AfterID.
	Parked(ctx context.Context, q ParkedQuery) ([]Record, error)
	// Redrive makes the given parked rows pending again with their attempts
	// reset to zero, and returns how many it changed. IDs that are not
	// parked are ignored.
	Redrive(ctx context.Context, ids ...int64) (int, error)
	// Delete removes the given parked rows for good and returns how many it
	// deleted. IDs that are not parked are ignored: Delete never removes a
	// pending or published row.
	Delete(ctx context.Context, ids ...int64) (int, error)
}

// Notifier is implemented by a Store that can tell a Relay when new rows
// were committed, so the relay publishes them at once instead of at its next
// poll. The postgres store implements it with LISTEN/NOTIFY.
type Notifier interface {
	// Listen calls wake after rows were committed, until ctx is done or the
	// notification channel fails. It returns nil when ctx is done and an
	// error when the channel broke; the Relay then falls back to polling and
	// calls Listen again after a pause. wake must not block.
	Listen(ctx context.Context, wake func()) error
}

// ClaimRequest says what to claim.
type ClaimRequest struct {
	// Limit is the maximum number of rows to return. It must be positive.
	Limit int
	// DeadBlocksKey makes a parked row block every later row of its key
	// until it is redriven or deleted. When false, a parked row is skipped
	// and its key flows on.
	DeadBlocksKey bool
}

// Claim is a set of rows locked by one Store.Claim call. Exactly one of
// Complete and Release must be called; both end the claim. A Claim that the
// store may end on its own after some time also implements ClaimDeadline.
type Claim interface {
	// Records returns the claimed rows in ID order.
	Records() []Record
	// Complete records what happened to the claimed rows and ends the claim
	// atomically: either every change in o is stored or none is (and the
	// rows are released unchanged). Claimed rows named neither in
	// o.Published nor in o.Failed are released unchanged.
	Complete(ctx context.Context, o Outcome) error
	// Release ends the claim and leaves every row unchanged.
	Release(ctx context.Context) error
}

// ClaimDeadline is implemented by a Claim that the store may end on its own
// once it has been held for a while (the postgres store's claims, after its
// ClaimTimeout). The Relay reads it to stop publishing a claim's rows in time
// to complete the claim, so that no other claim gets rows it is still
// publishing.
type ClaimDeadline interface {
	// Deadline returns the time until which the store keeps the claim: it
	// does not end the claim on its own before then, so a Complete or
	// Release that reaches the store earlier finds the claim held (a crash
	// or a lost connection still ends a claim at any time). After the
	// deadline the claim may have ended, its rows may have been claimed
	// again, and Complete fails. ok is false when the store never ends the
	// claim on its own. The result is the same for the claim's whole life.
	Deadline() (deadline time.Time, ok bool)
}

// Outcome is the result of publishing a claim.
type Outcome struct {
	// Published lists the rows the broker accepted.
	Published []int64
	// Delete removes published rows instead of marking them published.
	Delete bool
	// Failed lists the rows whose publication failed.
	Failed []Failure
}

// Failure is a row whose publication failed. Completing a claim with a
// Failure adds one to the row's Attempts.
type Failure struct {
	ID int64
	// Reason is recorded as the row's LastError.
	Reason string
	// Park parks the row (status dead). Otherwise the row stays pending and
	// is not claimed again for RetryAfter.
	Park bool
	// RetryAfter is the backoff before the row may be claimed again.
	RetryAfter time.Duration
}

// Status is the state of an outbox row.
type Status string

// Row states.
const (
	// StatusPending: waiting to be published (possibly after a backoff).
	StatusPending Status = "pending"
	// StatusPublished: the broker accepted the message.
	StatusPublished Status = "published"
	// StatusDead: parked after MaxAttempts failures or because the row can
	// never be published; see Record.LastError.
	StatusDead Status = "dead"
)

// Record is one outbox row.
type Record struct {
	// ID orders the rows of a key. Stores assign increasing IDs at enqueue.
	ID int64
	// Message is what the relay publishes.
	Message broker.Message
	// Status is the row's state.
	Status Status
	// Attempts counts the failed publish attempts charged to the row.
	Attempts int
	// LastError is the reason of the last failure, or why the row was
	// parked.
	LastError string
	// EnqueuedAt is when the row was written, by the store's clock.
	EnqueuedAt time.Time
	// ParkedAt is when the row was parked, zero unless Status is
	// StatusDead.
	ParkedAt time.Time
	// Malformed, when not empty, says why the stored row cannot be turned
	// into a Message (for example headers that are not a JSON object of
	// strings). The Relay parks such rows with this reason.
	Malformed string
}

// Stats is a snapshot of an outbox's backlog.
type Stats struct {
	// Pending counts rows waiting to be published, including rows in flight
	// and rows waiting for a retry.
	Pending int64
	// OldestPending is the enqueue time of the oldest pending row, zero when
	// there is none.
	OldestPending time.Time
	// Dead counts parked rows.
	Dead int64
}

// ParkedQuery pages through parked rows.
type ParkedQuery struct {
	// AfterID lists rows with a greater ID; zero starts at the first.
	AfterID int64
	// Limit caps the result. Zero means 100.
	Limit int
}
