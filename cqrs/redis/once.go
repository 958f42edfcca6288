package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/internal/fault"
)

var _ cqrs.OnceStore[*Tx] = (*Store)(nil)

// appliedKey is the key recording that version id applied event eventID.
func (s *Store) appliedKey(id cqrs.ID, eventID string) string {
	return s.VersionPrefix(id) + "_applied:" + eventID
}

// ApplyOnce implements cqrs.OnceStore: it WATCHes a key per event ID
// ("<version prefix>_applied:<event ID>"), reads which exist (those IDs
// are not fresh), and queues fn's writes, the keys of the fresh IDs (with
// a TTL of o.Keep) and the counts in one MULTI/EXEC. When another instance
// recorded one of the IDs in between, EXEC fails and the whole round runs
// again (up to 100 times) with that ID no longer fresh.
func (s *Store) ApplyOnce(ctx context.Context, id cqrs.ID, o cqrs.Once, fn func(context.Context, *Tx, []bool) error) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return fmt.Errorf("cqrs/redis: %w", err)
	}
	keys := make([]string, len(o.IDs))
	for i, eid := range o.IDs {
		keys[i] = s.appliedKey(id, eid)
	}
	for attempt := 1; ; attempt++ {
		retry := false
		var ferr error
		err := s.rdb.Watch(ctx, func(w *goredis.Tx) error {
			fresh := make([]bool, len(keys))
			if len(keys) > 0 {
				vals, err := w.MGet(ctx, keys...).Result()
				if err != nil {
					return err
				}
				for i, v := range vals {
					fresh[i] = v == nil
				}
			}
			isNew := make(map[string]bool, len(o.IDs))
			for i, f := range fresh {
				if f {
					isNew[o.IDs[i]] = true
				}
			}
			_, err := w.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
				if fn != nil {
					if ferr = fn(ctx, &Tx{pipe: pipe, prefix: s.VersionPrefix(id), id: id}, fresh); ferr != nil {
						return ferr
					}
				}
				for i, k := range keys {
					if fresh[i] {
						pipe.Set(ctx, k, 1, o.Keep)
					}
				}
				var skipped []any
				for _, k := range o.Skipped {
					if isNew[k.EventID] {
						skipped = append(skipped, fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s", k.Position, k.EventID, k.Version, k.StreamID, k.Type, k.Error))
					}
				}
				st := s.stateKey(id)
				pipe.HSet(ctx, st, "status", string(cqrs.StatusRunning), "error", "", "attempts", 0, "updated", time.Now().UnixMilli())
				if n := int64(len(isNew) - len(skipped)); n > 0 {
					pipe.HIncrBy(ctx, st, "events", n)
				}
				if len(skipped) > 0 {
					pipe.HIncrBy(ctx, st, "skipped", int64(len(skipped)))
					pipe.RPush(ctx, s.skippedKey(id), skipped...)
				}
				return fault.At(ctx, "cqrs/redis.commit", o)
			})
			if ferr != nil {
				return ferr
			}
			if errors.Is(err, goredis.TxFailedErr) {
				retry = true
				return nil
			}
			return err
		}, keys...)
		if ferr != nil {
			return ferr
		}
		if err != nil || !retry {
			if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				return fmt.Errorf("cqrs/redis: apply %s: %w: %w", id, ctx.Err(), err)
			}
			if err != nil {
				return fmt.Errorf("cqrs/redis: apply %s: %w", id, err)
			}
			return nil
		}
		if attempt >= 100 {
			return fmt.Errorf("cqrs/redis: %w: %s: the group kept conflicting", cqrs.ErrCheckpointConflict, id)
		}
	}
}

// Fail implements cqrs.OnceStore.
func (s *Store) Fail(ctx context.Context, id cqrs.ID, status cqrs.Status, attempts int, msg string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	err := s.rdb.HSet(ctx, s.stateKey(id), "status", string(status), "attempts", attempts, "error", msg, "updated", time.Now().UnixMilli()).Err()
	if err != nil {
		return fmt.Errorf("cqrs/redis: record failure of %s: %w", id, err)
	}
	return nil
}
