package redis

import (
	"context"
	"errors"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/idempotency"
)

// Claim is the outcome of one key of AcquireBatch. Exactly one of Lease,
// Done and Err is set.
type Claim struct {
	// Key is the key, as given.
	Key string
	// Lease holds the key when it was free: process the message, then end
	// the lease (Complete, Release, or the batch forms).
	Lease *Lease
	// Done is the record of a key completed before: skip the message.
	Done *idempotency.Record
	// Err wraps idempotency.ErrInProgress when another worker holds the key
	// (retry later), idempotency.ErrInvalidKey for a bad key, or the Redis
	// error. After a connection error a key may have been taken on the
	// server without the caller knowing; its lease expires after
	// Config.Lease.
	Err error
}

// AcquireBatch acquires keys in scope in one pipelined round trip, with the
// same per-key semantics as Acquire (no fingerprints). The claims are in the
// order of keys. A key repeated within keys is held by its first occurrence;
// the later ones report ErrInProgress. The error is non-nil only when ctx
// was already done; per-key failures are in Claim.Err.
func (s *Store) AcquireBatch(ctx context.Context, scope string, keys []string) ([]Claim, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	claims := make([]Claim, len(keys))
	cmds := make([]*goredis.Cmd, len(keys))
	leases := make([]Lease, len(keys))
	pipe := s.rdb.Pipeline()
	for i, k := range keys {
		claims[i].Key = k
		if err := idempotency.CheckKey(scope, k); err != nil {
			claims[i].Err = err
			continue
		}
		l := &leases[i]
		s.initLease(l, scope, k, nil)
		claims[i].Lease = l
		cmds[i] = pipe.Do(ctx, s.acquireArgs(l)...)
	}
	if pipe.Len() > 0 {
		_, _ = pipe.Exec(ctx) // errors are per command
	}
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		old, err := cmd.Text()
		lease, rec, err := claims[i].Lease.result(old, err)
		claims[i].Lease, claims[i].Done, claims[i].Err = lease, rec, err
	}
	return claims, nil
}

// CompleteBatch completes every lease (storing no response) in one
// pipelined round trip. The error joins one error per lease that failed,
// each naming its key; a lease that had expired yields an error wrapping
// idempotency.ErrLeaseLost. Nil leases are skipped.
func (s *Store) CompleteBatch(ctx context.Context, leases ...*Lease) error {
	return s.runBatch(ctx, "complete", s.complete, leases, func(l *Lease) []any {
		return []any{l.token, encodeDone(l.fp, nil), s.keepMs}
	})
}

// ReleaseBatch releases every lease in one pipelined round trip; errors as
// for CompleteBatch.
func (s *Store) ReleaseBatch(ctx context.Context, leases ...*Lease) error {
	return s.runBatch(ctx, "release", s.release, leases, func(l *Lease) []any {
		return []any{l.token}
	})
}

func (s *Store) runBatch(ctx context.Context, op string, script *goredis.Script, leases []*Lease, args func(*Lease) []any) error {
	todo := make([]*Lease, 0, len(leases))
	for _, l := range leases {
		if l != nil {
			if l.s != s {
				return fmt.Errorf("idempotency/redis: %s batch: lease of key %q belongs to another Store", op, l.key)
			}
			todo = append(todo, l)
		}
	}
	var errs []error
	for attempt := 0; len(todo) > 0; attempt++ {
		cmds := make([]*goredis.Cmd, len(todo))
		pipe := s.rdb.Pipeline()
		for i, l := range todo {
			cmds[i] = script.EvalSha(ctx, pipe, []string{l.rkey}, args(l)...)
		}
		_, _ = pipe.Exec(ctx)
		var retry []*Lease
		for i, cmd := range cmds {
			n, err := cmd.Int()
			if err != nil && attempt == 0 && goredis.HasErrorPrefix(err, "NOSCRIPT") {
				retry = append(retry, todo[i])
				continue
			}
			if err := todo[i].check(op, n, err); err != nil {
				errs = append(errs, err)
			}
		}
		if len(retry) > 0 {
			if err := script.Load(ctx, s.rdb).Err(); err != nil {
				for _, l := range retry {
					errs = append(errs, l.check(op, 0, err))
				}
				break
			}
		}
		todo = retry
	}
	return errors.Join(errs...)
}
