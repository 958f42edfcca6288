package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// pruneEvery is how often a Store deletes expired applied IDs.
const pruneEvery = time.Minute

// ApplyOnce implements cqrs.OnceStore. In one transaction it inserts the
// IDs into "<table>_applied" (sorted; an ID recorded before and not
// expired is not fresh; a concurrent transaction inserting the same ID
// waits for this one and then finds it recorded), runs fn, adds the
// counts to the version's checkpoints row and records the fresh skipped
// events. A deadlock or serialization failure (the handler's writes racing
// another instance's) retries the whole transaction, up to 5 times. About
// once a minute it also deletes up to 10,000 expired IDs.
func (s *Store) ApplyOnce(ctx context.Context, id cqrs.ID, o cqrs.Once, fn func(context.Context, Tx, []bool) error) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("cqrs/postgres: %w", err)
	}
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if err = s.applyOnce(ctx, id, o, fn); !retryable(err) {
			break
		}
	}
	if err == nil {
		s.maybePrune(ctx)
	}
	return err
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (s *Store) applyOnce(ctx context.Context, id cqrs.ID, o cqrs.Once, fn func(context.Context, Tx, []bool) error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return wrap(ctx, "begin", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	sorted := slices.Clone(o.IDs)
	slices.Sort(sorted)
	rows, err := tx.Query(ctx, s.t.onceSQL, id.Name, id.Version, sorted, o.Keep.Milliseconds())
	if err != nil {
		return wrap(ctx, "record event IDs of "+id.String(), err)
	}
	newIDs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return wrap(ctx, "record event IDs of "+id.String(), err)
	}
	isNew := make(map[string]bool, len(newIDs))
	for _, n := range newIDs {
		isNew[n] = true
	}
	fresh := make([]bool, len(o.IDs))
	for i, eid := range o.IDs {
		fresh[i] = isNew[eid]
	}
	if fn != nil {
		if err := fn(ctx, Tx{Tx: tx, id: id}, fresh); err != nil {
			return err
		}
	}
	var k []cqrs.SkippedEvent
	for _, sk := range o.Skipped {
		if isNew[sk.EventID] {
			k = append(k, sk)
		}
	}
	n := len(k)
	kt, ks, kid, kst, kv, kty, ke := make([]int64, n), make([]int64, n), make([]string, n), make([]string, n), make([]int64, n), make([]string, n), make([]string, n)
	for i, sk := range k {
		kt[i], ks[i], kid[i], kst[i], kv[i], kty[i], ke[i] = int64(sk.Position.Transaction), sk.Position.Sequence, sk.EventID, sk.StreamID, sk.Version, sk.Type, sk.Error
	}
	if _, err := tx.Exec(ctx, s.t.onceCommitSQL, id.Name, id.Version, len(newIDs)-n, kt, ks, kid, kst, kv, kty, ke); err != nil {
		return wrap(ctx, "write counts of "+id.String(), err)
	}
	if err := fault.At(ctx, "cqrs/postgres.commit", o); err != nil {
		return err
	}
	return wrap(ctx, "commit "+id.String(), tx.Commit(ctx))
}

func (s *Store) maybePrune(ctx context.Context) {
	now := time.Now().UnixNano()
	next := s.nextPrune.Load()
	if now < next || !s.nextPrune.CompareAndSwap(next, now+int64(pruneEvery)) {
		return
	}
	if next == 0 {
		return // the first call only schedules
	}
	_, _ = s.pool.Exec(ctx, s.t.pruneSQL)
}

// Prune deletes every expired applied event ID now (ApplyOnce does it in
// bounded steps about once a minute) and returns how many it deleted.
func (s *Store) Prune(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.t.applied+` WHERE expires_at < now()`)
	return tag.RowsAffected(), wrap(ctx, "prune applied event IDs", err)
}

// Fail implements cqrs.OnceStore.
func (s *Store) Fail(ctx context.Context, id cqrs.ID, status cqrs.Status, attempts int, msg string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.t.checkpoints+` AS c (name, version, status, attempts, error) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name, version) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, error = excluded.error, updated_at = now()`,
		id.Name, id.Version, string(status), attempts, msg)
	return wrap(ctx, "record failure of "+id.String(), err)
}
