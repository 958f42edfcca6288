package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/outbox"
)

// errClaimDone is returned by Complete or Release on a claim that already
// ended.
var errClaimDone = errors.New("outbox/postgres: claim already completed or released")

// Claim implements outbox.Store.
//
// A claim is a transaction on its own connection. Its first statement picks
// keys from the oldest due pending rows, takes a transaction-scoped advisory
// try-lock on each (keys held by another relay are skipped) and locks the
// chosen rows FOR UPDATE SKIP LOCKED, re-checking each row's latest version.
// A second statement, sent in the same round trip but with a snapshot that
// postdates the key locks, finds keys that the previous holder left blocked;
// their rows are dropped. The key and row locks last until
// Complete or Release ends the transaction, or until the session dies (the
// server then aborts the transaction and releases everything). An idle claim
// is ended by the server after Config.ClaimTimeout; a claim with rows
// implements outbox.ClaimDeadline and reports that time, counted from before
// the claim's transaction began.
func (s *Store) Claim(ctx context.Context, req outbox.ClaimRequest) (outbox.Claim, error) {
	if req.Limit <= 0 {
		return nil, fmt.Errorf("outbox/postgres: claim: limit %d must be positive", req.Limit)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox/postgres: claim: %w", err)
	}
	c := &claim{sql: &s.sql, conn: conn}
	// The server's idle timer starts when the claim statements have run,
	// later than this: the deadline errs on the early side.
	c.deadline = time.Now().Add(time.Duration(idleTimeoutMillis(s.cfg.ClaimTimeout)) * time.Millisecond)
	c.recs, err = s.claimRows(ctx, conn, req)
	if err != nil {
		c.abort()
		return nil, fmt.Errorf("outbox/postgres: claim: %w", err)
	}
	if len(c.recs) == 0 {
		// Nothing to hold: end the transaction now.
		if err := c.Release(ctx); err != nil {
			return nil, err
		}
		return &claim{}, nil
	}
	return c, nil
}

// claimRows begins the claim transaction and runs both claim statements in
// one round trip, and returns the claimed rows of unblocked keys in ID order.
func (s *Store) claimRows(ctx context.Context, conn *pgxpool.Conn, req outbox.ClaimRequest) ([]outbox.Record, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	// Transaction-local settings. The window scan is meant to walk the
	// pending index in id order and stop at its LIMIT; with stale statistics
	// (a table that just filled up) the planner may prefer to sort every
	// pending row instead, so sorting is made the last resort. That makes the
	// plan's cost look huge, which would trigger JIT compilation (hundreds of
	// milliseconds) for a statement that runs in a few: JIT is off.
	b.Queue(`SELECT set_config('idle_in_transaction_session_timeout', $1, true),
	set_config('enable_sort', 'off', true), set_config('jit', 'off', true)`,
		strconv.FormatInt(idleTimeoutMillis(s.cfg.ClaimTimeout), 10))
	b.Queue(s.sql.claim, req.Limit, claimWindow(req.Limit), req.DeadBlocksKey)
	b.Queue(s.sql.blockedKeys, req.DeadBlocksKey)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	recs, err := scanRecords(rows, false)
	if err != nil {
		return nil, err
	}
	rows, err = br.Query()
	if err != nil {
		return nil, err
	}
	blocked, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	if err := br.Close(); err != nil {
		return nil, err
	}
	if len(blocked) > 0 {
		drop := make(map[string]bool, len(blocked))
		for _, k := range blocked {
			drop[k] = true
		}
		recs = slices.DeleteFunc(recs, func(r outbox.Record) bool { return drop[r.Message.Key] })
	}
	slices.SortFunc(recs, func(a, b outbox.Record) int { return cmp.Compare(a.ID, b.ID) })
	return recs, nil
}

// idleTimeoutMillis converts d to a value of
// idle_in_transaction_session_timeout, an int32 of milliseconds where 0 means
// no timeout: rounded up, so that a positive d under a millisecond still ends
// an idle claim, and capped at the maximum (about 24.8 days), which the server
// would otherwise reject, failing every claim.
func idleTimeoutMillis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d%time.Millisecond > 0 {
		ms++
	}
	return min(ms, math.MaxInt32)
}

// claimWindow is how many of the oldest pending rows a claim looks at to
// choose its keys: twice the limit, so that a relay sees past the rows other
// relays hold in flight and takes only part of the keys, leaving the rest to
// them.
func claimWindow(limit int) int { return max(2*limit, 1000) }

type claim struct {
	sql      *statements
	conn     *pgxpool.Conn // nil once ended
	recs     []outbox.Record
	deadline time.Time // zero for a claim without rows, which holds nothing
}

var _ outbox.ClaimDeadline = (*claim)(nil)

func (c *claim) Records() []outbox.Record { return c.recs }

// Deadline implements outbox.ClaimDeadline: the server ends the claim's
// transaction once it has been idle for Config.ClaimTimeout, and the claim
// sends no statement between claiming and Complete or Release, so it is held
// until ClaimTimeout after the claim began. A claim without rows holds
// nothing and has no deadline.
func (c *claim) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }

// Complete records o and commits, in one round trip.
func (c *claim) Complete(ctx context.Context, o outbox.Outcome) error {
	if c.conn == nil {
		if len(c.recs) == 0 && len(o.Published) == 0 && len(o.Failed) == 0 {
			return nil
		}
		return errClaimDone
	}
	b := &pgx.Batch{}
	if len(o.Published) > 0 {
		q := c.sql.markPublished
		if o.Delete {
			q = c.sql.deletePublished
		}
		b.Queue(q, o.Published)
	}
	if len(o.Failed) > 0 {
		n := len(o.Failed)
		ids, reasons, parks, delays := make([]int64, n), make([]string, n), make([]bool, n), make([]int64, n)
		for i, f := range o.Failed {
			ids[i], reasons[i], parks[i] = f.ID, f.Reason, f.Park
			delays[i] = max(f.RetryAfter, 0).Microseconds()
		}
		b.Queue(c.sql.fail, ids, reasons, parks, delays)
	}
	b.Queue("COMMIT")
	br := c.conn.SendBatch(ctx, b)
	var err error
	for range b.Len() {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		if err != nil {
			break
		}
		if s := tag.String(); s == "ROLLBACK" {
			err = errors.New("transaction was rolled back")
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		c.abort()
		return fmt.Errorf("outbox/postgres: complete claim: %w", err)
	}
	c.conn.Release()
	c.conn = nil
	return nil
}

// Release rolls the claim back.
func (c *claim) Release(ctx context.Context) error {
	if c.conn == nil {
		if len(c.recs) == 0 {
			return nil
		}
		return errClaimDone
	}
	_, err := c.conn.Exec(ctx, "ROLLBACK")
	if err != nil {
		c.abort()
		return fmt.Errorf("outbox/postgres: release claim: %w", err)
	}
	c.conn.Release()
	c.conn = nil
	return nil
}

// abort ends the claim after an error: it tries a rollback and, if the
// connection is not back to idle, closes it so the server aborts the
// transaction and the pool never reuses it.
func (c *claim) abort() {
	if c.conn == nil {
		return
	}
	conn := c.conn
	c.conn = nil
	if !conn.Conn().IsClosed() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := conn.Exec(ctx, "ROLLBACK")
		cancel()
		if err != nil || conn.Conn().PgConn().TxStatus() != 'I' {
			_ = conn.Hijack().Close(context.Background())
			return
		}
	}
	conn.Release()
}
