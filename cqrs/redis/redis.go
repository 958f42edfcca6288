package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// Defaults for zero Config fields.
const (
	DefaultPrefix   = "steadfast:cqrs:"
	DefaultLeaseTTL = 5 * time.Second
)

// Config tunes a Store.
type Config struct {
	// Prefix starts every key of the store. Default DefaultPrefix.
	Prefix string
	// LeaseTTL is how long a lease outlives its holder: the holder renews
	// it every LeaseTTL/3; when the holder dies, a standby takes over
	// within LeaseTTL (plus its TakeoverInterval). Default
	// DefaultLeaseTTL; at least 100ms.
	LeaseTTL time.Duration
}

// Store keeps projection read models, checkpoints and leases in Redis.
// See the package doc for the keys and the guarantees.
type Store struct {
	rdb goredis.UniversalClient
	cfg Config
}

var _ cqrs.Store[*Tx] = (*Store)(nil)

// New returns a store on rdb.
func New(rdb goredis.UniversalClient, cfg Config) (*Store, error) {
	if rdb == nil {
		return nil, fmt.Errorf("cqrs/redis: %w: nil client", cqrs.ErrInvalidConfig)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.LeaseTTL < 100*time.Millisecond {
		return nil, fmt.Errorf("cqrs/redis: %w: LeaseTTL %v below 100ms", cqrs.ErrInvalidConfig, cfg.LeaseTTL)
	}
	return &Store{rdb: rdb, cfg: cfg}, nil
}

// VersionPrefix returns the prefix of every read-model key of version id:
// "<Prefix><name>:v<version>:".
func (s *Store) VersionPrefix(id cqrs.ID) string {
	return s.cfg.Prefix + id.Name + ":v" + strconv.Itoa(id.Version) + ":"
}

func (s *Store) stateKey(id cqrs.ID) string   { return s.VersionPrefix(id) + "_state" }
func (s *Store) leaseKey(id cqrs.ID) string   { return s.VersionPrefix(id) + "_lease" }
func (s *Store) skippedKey(id cqrs.ID) string { return s.VersionPrefix(id) + "_skipped" }
func (s *Store) nameKey(name string) string   { return s.cfg.Prefix + name + ":_name" }

// Tx is what a projection's handler writes through: the commands it queues
// run in the batch's MULTI/EXEC, with the checkpoint. Commands' results
// are not available (nothing runs before EXEC); a handler writes, it does
// not read.
type Tx struct {
	pipe   goredis.Pipeliner
	prefix string
	id     cqrs.ID
}

// Pipe returns the MULTI/EXEC pipeline: queue any write command on it,
// with keys from Key.
func (tx *Tx) Pipe() goredis.Pipeliner { return tx.pipe }

// Projection returns the version the batch belongs to.
func (tx *Tx) Projection() cqrs.ID { return tx.id }

// Key returns the version's key for k: every read-model key lives under
// the version's prefix, so versions never share data.
func (tx *Tx) Key(k string) string { return tx.prefix + k }

// HSet sets fields of the entity hash k (a hash per entity).
func (tx *Tx) HSet(ctx context.Context, k string, values ...any) {
	tx.pipe.HSet(ctx, tx.Key(k), values...)
}

// HIncrBy adds n to field of the hash k.
func (tx *Tx) HIncrBy(ctx context.Context, k, field string, n int64) {
	tx.pipe.HIncrBy(ctx, tx.Key(k), field, n)
}

// ZIncrBy adds delta to member's score in the sorted set k (a
// leaderboard).
func (tx *Tx) ZIncrBy(ctx context.Context, k string, delta float64, member string) {
	tx.pipe.ZIncrBy(ctx, tx.Key(k), delta, member)
}

// Del deletes the key k.
func (tx *Tx) Del(ctx context.Context, k string) { tx.pipe.Del(ctx, tx.Key(k)) }

var renewScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0`)

var releaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// Acquire implements cqrs.Store: the lease is a key set with NX and a TTL
// (Config.LeaseTTL) to a token of this lease, renewed every LeaseTTL/3
// while held; every batch checks it in its MULTI/EXEC (WATCH), so a holder
// whose lease expired commits nothing.
func (s *Store) Acquire(ctx context.Context, id cqrs.ID, owner string) (cqrs.Lease[*Tx], error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	token := owner + "/" + broker.NewID()
	ok, err := s.rdb.SetNX(ctx, s.leaseKey(id), token, s.cfg.LeaseTTL).Result()
	if err != nil {
		return nil, fmt.Errorf("cqrs/redis: lock %s: %w", id, err)
	}
	if !ok {
		return nil, fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrLocked, id)
	}
	if err := s.rdb.HSet(ctx, s.stateKey(id), "owner", owner).Err(); err != nil {
		_ = releaseScript.Run(ctx, s.rdb, []string{s.leaseKey(id)}, token).Err()
		return nil, fmt.Errorf("cqrs/redis: register %s: %w", id, err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &lease{s: s, id: id, token: token, cancel: cancel}
	l.wg.Add(1)
	go l.renew(rctx)
	return l, nil
}

type lease struct {
	s      *Store
	id     cqrs.ID
	token  string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (l *lease) renew(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(l.s.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := renewScript.Run(ctx, l.s.rdb, []string{l.s.leaseKey(l.id)}, l.token, l.s.cfg.LeaseTTL.Milliseconds()).Int()
		if err == nil && n == 0 {
			return // lost: the next Apply fails with ErrLeaseLost
		}
	}
}

func (l *lease) State(ctx context.Context) (cqrs.State, error) { return l.s.State(ctx, l.id) }

func parseState(id cqrs.ID, h map[string]string, active int) (cqrs.State, error) {
	st := cqrs.State{ID: id, Status: cqrs.StatusRunning, Active: active == id.Version && active != 0}
	if c := h["checkpoint"]; c != "" {
		p, err := eventsource.ParsePosition(c)
		if err != nil {
			return st, fmt.Errorf("cqrs/redis: state of %s: %w", id, err)
		}
		st.Checkpoint = p
	}
	if v := h["status"]; v != "" {
		st.Status = cqrs.Status(v)
	}
	st.Error, st.Owner = h["error"], h["owner"]
	st.Attempts, _ = strconv.Atoi(h["attempts"])
	st.Events, _ = strconv.ParseInt(h["events"], 10, 64)
	st.Skipped, _ = strconv.ParseInt(h["skipped"], 10, 64)
	if ms, err := strconv.ParseInt(h["updated"], 10, 64); err == nil {
		st.Updated = time.UnixMilli(ms)
	}
	return st, nil
}

func (l *lease) Apply(ctx context.Context, c cqrs.Commit, fn func(context.Context, *Tx, eventsource.Position) error) error {
	s := l.s
	keys := []string{s.stateKey(l.id), s.leaseKey(l.id), s.nameKey(l.id.Name)}
	for attempt := 1; ; attempt++ {
		retry := false
		err := s.rdb.Watch(ctx, func(w *goredis.Tx) error {
			pipe := w.Pipeline()
			ck := pipe.HGet(ctx, keys[0], "checkpoint")
			ls := pipe.Get(ctx, keys[1])
			ef := pipe.HGet(ctx, keys[2], "effects")
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
				return err
			}
			if ls.Val() != l.token {
				return fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrLeaseLost, l.id)
			}
			var at, live eventsource.Position
			if v := ck.Val(); v != "" {
				var err error
				if at, err = eventsource.ParsePosition(v); err != nil {
					return fmt.Errorf("cqrs/redis: checkpoint of %s: %w", l.id, err)
				}
			}
			if v := ef.Val(); v != "" {
				live, _ = eventsource.ParsePosition(v)
			}
			if at != c.From {
				return fmt.Errorf("cqrs/redis: %w: %s: stored %s, batch from %s", cqrs.ErrCheckpointConflict, l.id, at, c.From)
			}
			var ferr error
			_, err := w.TxPipelined(ctx, func(pipe goredis.Pipeliner) error {
				if fn != nil {
					if ferr = fn(ctx, &Tx{pipe: pipe, prefix: s.VersionPrefix(l.id), id: l.id}, live); ferr != nil {
						return ferr
					}
				}
				pipe.HSet(ctx, keys[0], "checkpoint", c.To.String(), "status", string(cqrs.StatusRunning), "error", "", "attempts", 0,
					"updated", time.Now().UnixMilli())
				if c.Events > 0 {
					pipe.HIncrBy(ctx, keys[0], "events", int64(c.Events))
					if live.Before(c.To) {
						pipe.HSet(ctx, keys[2], "effects", c.To.String())
					}
				}
				if n := len(c.Skipped); n > 0 {
					pipe.HIncrBy(ctx, keys[0], "skipped", int64(n))
					vals := make([]any, n)
					for i, k := range c.Skipped {
						vals[i] = fmt.Sprintf("%s\t%s\t%d\t%s\t%s\t%s", k.Position, k.EventID, k.Version, k.StreamID, k.Type, k.Error)
					}
					pipe.RPush(ctx, s.skippedKey(l.id), vals...)
				}
				return fault.At(ctx, "cqrs/redis.commit", c)
			})
			if ferr != nil {
				return ferr
			}
			if errors.Is(err, goredis.TxFailedErr) {
				retry = true // a watched key changed: find out which below
				return nil
			}
			return err
		}, keys...)
		if err != nil || !retry {
			if err != nil && ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
				return fmt.Errorf("cqrs/redis: apply %s: %w: %w", l.id, ctx.Err(), err)
			}
			return err
		}
		// Another version moved the side-effects checkpoint, or the lease
		// or checkpoint changed: the next round tells which.
		if attempt >= 100 {
			return fmt.Errorf("cqrs/redis: %w: %s: the batch kept conflicting", cqrs.ErrCheckpointConflict, l.id)
		}
	}
}

var failScript = goredis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
local c = redis.call('HGET', KEYS[1], 'checkpoint')
if (c or '0:0') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempts', ARGV[4], 'error', ARGV[5], 'updated', ARGV[6])
return 1`)

func (l *lease) Fail(ctx context.Context, at eventsource.Position, status cqrs.Status, attempts int, msg string) error {
	n, err := failScript.Run(ctx, l.s.rdb, []string{l.s.stateKey(l.id), l.s.leaseKey(l.id)}, l.token, at.String(), string(status),
		attempts, msg, time.Now().UnixMilli()).Int()
	switch {
	case err != nil:
		return fmt.Errorf("cqrs/redis: record failure of %s: %w", l.id, err)
	case n < 0:
		return fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrLeaseLost, l.id)
	case n == 0:
		return fmt.Errorf("cqrs/redis: %w: %s: failure at %s is not the stored checkpoint", cqrs.ErrCheckpointConflict, l.id, at)
	}
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	l.cancel()
	l.wg.Wait()
	if err := releaseScript.Run(ctx, l.s.rdb, []string{l.s.leaseKey(l.id)}, l.token).Err(); err != nil {
		return fmt.Errorf("cqrs/redis: release %s: %w", l.id, err)
	}
	return nil
}

// State implements cqrs.StateReader.
func (s *Store) State(ctx context.Context, id cqrs.ID) (cqrs.State, error) {
	pipe := s.rdb.Pipeline()
	h := pipe.HGetAll(ctx, s.stateKey(id))
	a := pipe.HGet(ctx, s.nameKey(id.Name), "active")
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return cqrs.State{}, fmt.Errorf("cqrs/redis: state of %s: %w", id, err)
	}
	if len(h.Val()) == 0 {
		return cqrs.State{}, fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrNotFound, id)
	}
	active, _ := strconv.Atoi(a.Val())
	return parseState(id, h.Val(), active)
}

// ActiveVersion implements cqrs.StateReader.
func (s *Store) ActiveVersion(ctx context.Context, name string) (int, error) {
	v, err := s.rdb.HGet(ctx, s.nameKey(name), "active").Int()
	if errors.Is(err, goredis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cqrs/redis: active version of %s: %w", name, err)
	}
	return v, nil
}

// Positions compare as (transaction, sequence); Lua numbers hold both
// exactly below 2^53.
var activateScript = goredis.NewScript(`
local function pos(s)
  if not s then return 0, 0 end
  local t, q = string.match(s, '^(%d+):(%d+)$')
  return tonumber(t), tonumber(q)
end
local mine = redis.call('HGET', KEYS[1], 'checkpoint')
if not mine and redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[3], 'active') or '0')
if cur ~= 0 and cur ~= tonumber(ARGV[1]) then
  local t1, s1 = pos(mine)
  local t2, s2 = pos(redis.call('HGET', KEYS[2], 'checkpoint'))
  if t1 < t2 or (t1 == t2 and s1 < s2) then return 0 end
end
redis.call('HSET', KEYS[3], 'active', ARGV[1])
return 1`)

// Activate implements cqrs.Store: one script checks that id has reached
// the serving version's checkpoint and points the name at id (the
// "active" field of its name key); readers that resolve the serving
// version in the same script as their read (Top, HGetAll, Get) see one
// version or the other, never a mix. views are ignored.
func (s *Store) Activate(ctx context.Context, id cqrs.ID, views []string) error {
	if err := id.Validate(); err != nil {
		return err
	}
	cur, err := s.ActiveVersion(ctx, id.Name)
	if err != nil {
		return err
	}
	n, err := activateScript.Run(ctx, s.rdb, []string{s.stateKey(id), s.stateKey(cqrs.ID{Name: id.Name, Version: max(cur, 1)}),
		s.nameKey(id.Name)}, id.Version).Int()
	switch {
	case err != nil:
		return fmt.Errorf("cqrs/redis: activate %s: %w", id, err)
	case n < 0:
		return fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrNotFound, id)
	case n == 0:
		return fmt.Errorf("cqrs/redis: %w: %s is behind version %d", cqrs.ErrNotCaughtUp, id, cur)
	}
	return nil
}

// Reset implements cqrs.Store.
func (s *Store) Reset(ctx context.Context, id cqrs.ID) error {
	n, err := s.rdb.Exists(ctx, s.stateKey(id)).Result()
	if err != nil {
		return fmt.Errorf("cqrs/redis: reset %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("cqrs/redis: %w: %s", cqrs.ErrNotFound, id)
	}
	if err := s.rdb.HSet(ctx, s.stateKey(id), "status", string(cqrs.StatusRunning), "error", "", "attempts", 0).Err(); err != nil {
		return fmt.Errorf("cqrs/redis: reset %s: %w", id, err)
	}
	return nil
}

// Skipped returns up to limit events version id skipped, in the order they
// were skipped.
func (s *Store) Skipped(ctx context.Context, id cqrs.ID, limit int) ([]cqrs.SkippedEvent, error) {
	vals, err := s.rdb.LRange(ctx, s.skippedKey(id), 0, int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("cqrs/redis: skipped of %s: %w", id, err)
	}
	out := make([]cqrs.SkippedEvent, 0, len(vals))
	for _, v := range vals {
		var k cqrs.SkippedEvent
		var pos string
		parts := splitN(v, '\t', 6)
		if len(parts) == 6 {
			pos, k.EventID, k.StreamID, k.Type, k.Error = parts[0], parts[1], parts[3], parts[4], parts[5]
			k.Version, _ = strconv.ParseInt(parts[2], 10, 64)
			k.Position, _ = eventsource.ParsePosition(pos)
		}
		out = append(out, k)
	}
	return out, nil
}

func splitN(s string, sep byte, n int) []string {
	var out []string
	for len(out) < n-1 {
		i := -1
		for j := 0; j < len(s); j++ {
			if s[j] == sep {
				i = j
				break
			}
		}
		if i < 0 {
			break
		}
		out, s = append(out, s[:i]), s[i+1:]
	}
	return append(out, s)
}

var hgetallScript = goredis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'active')
if not v then return {} end
return redis.call('HGETALL', ARGV[1] .. v .. ':' .. ARGV[2])`)

var topScript = goredis.NewScript(`
local v = redis.call('HGET', KEYS[1], 'active')
if not v then return {} end
return redis.call('ZREVRANGE', ARGV[1] .. v .. ':' .. ARGV[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')`)

// HGetAll reads the hash k (an entity) of the serving version of name, in
// one script: atomic with respect to swaps. Empty when no version serves.
func (s *Store) HGetAll(ctx context.Context, name, k string) (map[string]string, error) {
	vals, err := hgetallScript.Run(ctx, s.rdb, []string{s.nameKey(name)}, s.cfg.Prefix+name+":v", k).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("cqrs/redis: read %s of %s: %w", k, name, err)
	}
	out := make(map[string]string, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		out[vals[i]] = vals[i+1]
	}
	return out, nil
}

// Top reads the n highest members of the sorted set k (a leaderboard) of
// the serving version of name, highest first, in one script.
func (s *Store) Top(ctx context.Context, name, k string, n int) ([]goredis.Z, error) {
	vals, err := topScript.Run(ctx, s.rdb, []string{s.nameKey(name)}, s.cfg.Prefix+name+":v", k, n).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("cqrs/redis: read %s of %s: %w", k, name, err)
	}
	out := make([]goredis.Z, 0, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		f, _ := strconv.ParseFloat(vals[i+1], 64)
		out = append(out, goredis.Z{Member: vals[i], Score: f})
	}
	return out, nil
}
