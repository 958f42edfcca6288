// Package redis is an idempotency.Store on Redis (go-redis v9): fast,
// shared by every process that uses the same Redis, and best-effort.
//
// Import it as idemredis, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
//
// # How it works
//
// Acquire is one SET key lease NX PX <Lease> GET: a free key is taken with a
// lease that expires by itself, so a worker that dies mid-message frees the
// key after Config.Lease and another worker can take it over. Complete
// replaces the lease with a "done" record that lives Config.Retention;
// Release deletes the key so a redelivery is processed. Both are Lua
// compare-and-set scripts on the lease's random token: a holder whose lease
// ran out cannot complete or release the key another worker has since taken
// (it gets idempotency.ErrLeaseLost). A second worker arriving while a lease
// is live gets idempotency.ErrInProgress ("retry later"), never a duplicate.
//
// AcquireBatch, CompleteBatch and ReleaseBatch do the same for many keys in
// one pipelined round trip, for batch consumers.
//
// # Best-effort, by design
//
// Redis acknowledges a write before it reaches a replica or the disk. A
// failover to a replica that had not yet received the write, or a restart
// without appendfsync always, can forget a done record (the message is then
// processed again) or a lease (two workers then process it at once). Eviction
// under maxmemory (any policy other than noeviction) forgets done records
// too. Deduplication on Redis is therefore a strong filter, not a guarantee.
// When a duplicate effect is not acceptable, use the Postgres store, which
// claims the key in the same transaction as the effect.
//
// Keys are Config.Prefix + scope + ":" + key, with '%' and ':' in the scope
// percent-encoded, so scopes never collide.
package redis

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/idempotency"
)

// ErrInvalidConfig is wrapped by the errors of Config.Validate and New.
var ErrInvalidConfig = errors.New("idempotency/redis: invalid config")

// Defaults for Config fields left zero.
const (
	DefaultLease     = time.Minute
	DefaultRetention = 24 * time.Hour
)

// Config tunes a Store. The zero value is ready to use; zero fields take
// their documented defaults, negative ones are rejected.
type Config struct {
	// Prefix starts every key the store writes. Default "steadfast:idem:".
	Prefix string
	// Lease is how long an acquired key stays held without Complete or
	// Release. After it, another worker may take the key over and process
	// the message again, so set it above your slowest handler. Default
	// DefaultLease (1 minute).
	Lease time.Duration
	// Retention is how long a completed key is remembered (the TTL of the
	// done record). It must exceed the longest time a redelivery can take to
	// arrive (your broker's retry window), or a late redelivery is processed
	// again. Default DefaultRetention (24h).
	Retention time.Duration
}

// DefaultPrefix is the key prefix used when Config.Prefix is empty.
const DefaultPrefix = "steadfast:idem:"

func (c Config) withDefaults() Config {
	c.Prefix = cmp.Or(c.Prefix, DefaultPrefix)
	c.Lease = cmp.Or(c.Lease, DefaultLease)
	c.Retention = cmp.Or(c.Retention, DefaultRetention)
	return c
}

// Validate reports negative durations and durations below Redis's
// millisecond resolution, with an error wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	if c.Lease < time.Millisecond || c.Retention < time.Millisecond {
		return fmt.Errorf("%w: Lease %v and Retention %v must be at least 1ms", ErrInvalidConfig, c.Lease, c.Retention)
	}
	return nil
}

// Store is a Redis idempotency.Store, safe for concurrent use. Create it
// with New.
type Store struct {
	rdb      goredis.UniversalClient
	cfg      Config
	tokenPfx string
	seq      atomic.Uint64
	leaseMs  any // Config.Lease in ms, boxed once
	keepMs   any // Config.Retention in ms, boxed once
	complete *goredis.Script
	release  *goredis.Script
}

var _ idempotency.Store = (*Store)(nil)

// Record values: a lease is 'L' followed by the holder's token; a done record
// is 'D', the fingerprint's length as a uvarint, the fingerprint and the
// response.
const (
	tagLease = 'L'
	tagDone  = 'D'
)

// completeScript turns the caller's lease (ARGV[1]) into the done record
// ARGV[2] with TTL ARGV[3] ms, only while the lease is still the caller's.
const completeScript = `if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0`

// releaseScript deletes the key only while it holds the caller's lease.
const releaseScript = `if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`

// New returns a Store on rdb (a *redis.Client, *redis.ClusterClient or
// *redis.Ring). It does not contact Redis.
func New(rdb goredis.UniversalClient, cfg Config) (*Store, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil client", ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("idempotency/redis: lease token: %w", err)
	}
	cfg = cfg.withDefaults()
	return &Store{
		rdb:      rdb,
		cfg:      cfg,
		tokenPfx: string(tagLease) + hex.EncodeToString(id[:]) + "-",
		leaseMs:  cfg.Lease.Milliseconds(),
		keepMs:   cfg.Retention.Milliseconds(),
		complete: goredis.NewScript(completeScript),
		release:  goredis.NewScript(releaseScript),
	}, nil
}

// Key returns the Redis key holding scope and key.
func (s *Store) Key(scope, key string) string {
	return string(s.appendKey(nil, scope, key))
}

var scopeEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

func (s *Store) appendKey(b []byte, scope, key string) []byte {
	if strings.ContainsAny(scope, "%:") {
		scope = scopeEscaper.Replace(scope)
	}
	b = append(b, s.cfg.Prefix...)
	b = append(b, scope...)
	b = append(b, ':')
	return append(b, key...)
}

// initLease fills l for scope and key with a fresh token. The Redis key and
// the token share one allocation.
func (s *Store) initLease(l *Lease, scope, key string, fp []byte) {
	esc := scope
	if strings.ContainsAny(esc, "%:") {
		esc = scopeEscaper.Replace(esc)
	}
	var b strings.Builder
	b.Grow(len(s.cfg.Prefix) + len(esc) + 1 + len(key) + len(s.tokenPfx) + 13)
	b.WriteString(s.cfg.Prefix)
	b.WriteString(esc)
	b.WriteByte(':')
	b.WriteString(key)
	n := b.Len()
	b.WriteString(s.tokenPfx)
	var num [13]byte
	b.Write(strconv.AppendUint(num[:0], s.seq.Add(1), 36))
	both := b.String()
	*l = Lease{s: s, scope: scope, key: key, rkey: both[:n], token: both[n:], fp: fp}
}

// acquireArgs is SET key token PX lease NX GET: take the key if free, and
// return what it held otherwise. (Built directly rather than with SetArgs,
// which grows its argument slice twice per call.)
func (s *Store) acquireArgs(l *Lease) []any {
	return []any{"set", l.rkey, l.token, "px", s.leaseMs, "nx", "get"}
}

// Acquire implements idempotency.Store with one round trip.
func (s *Store) Acquire(ctx context.Context, scope, key string, fingerprint []byte) (idempotency.Lease, *idempotency.Record, error) {
	if err := idempotency.CheckKey(scope, key); err != nil {
		return nil, nil, err
	}
	l := &Lease{}
	s.initLease(l, scope, key, clone(fingerprint))
	old, err := s.rdb.Do(ctx, s.acquireArgs(l)...).Text()
	lease, rec, err := l.result(old, err)
	if lease == nil {
		return nil, rec, err // a nil *Lease must not become a non-nil interface
	}
	return lease, nil, nil
}

// result interprets the reply of SET NX GET.
func (l *Lease) result(old string, err error) (*Lease, *idempotency.Record, error) {
	switch {
	case errors.Is(err, goredis.Nil):
		return l, nil, nil
	case err != nil:
		return nil, nil, fmt.Errorf("idempotency/redis: acquire scope %q key %q: %w", l.scope, l.key, err)
	}
	rec, err := decode(old)
	if err != nil {
		return nil, nil, fmt.Errorf("idempotency/redis: scope %q key %q: %w", l.scope, l.key, err)
	}
	return nil, rec, nil
}

func decode(v string) (*idempotency.Record, error) {
	if v == "" {
		return nil, errors.New("empty record")
	}
	switch v[0] {
	case tagLease:
		return nil, idempotency.ErrInProgress
	case tagDone:
		n, w := binary.Uvarint([]byte(v[1:min(len(v), 1+binary.MaxVarintLen64)]))
		if w <= 0 || n > uint64(len(v)-1-w) {
			return nil, errors.New("malformed done record")
		}
		rec := &idempotency.Record{}
		if n > 0 {
			rec.Fingerprint = []byte(v[1+w : 1+w+int(n)])
		}
		if rest := v[1+w+int(n):]; rest != "" {
			rec.Response = []byte(rest)
		}
		return rec, nil
	}
	return nil, fmt.Errorf("unknown record tag %q", v[0])
}

func encodeDone(fp, resp []byte) string {
	b := make([]byte, 1, 1+binary.MaxVarintLen64+len(fp)+len(resp))
	b[0] = tagDone
	b = binary.AppendUvarint(b, uint64(len(fp)))
	b = append(b, fp...)
	b = append(b, resp...)
	return string(b)
}

// Lease is a key held in Redis. It implements idempotency.Lease.
type Lease struct {
	s          *Store
	scope, key string
	rkey       string
	token      string
	fp         []byte
}

// Key returns the key the lease holds (not the Redis key).
func (l *Lease) Key() string { return l.key }

// Complete marks the key done for Config.Retention, storing response. It
// returns an error wrapping idempotency.ErrLeaseLost when the lease had
// expired or was ended before.
func (l *Lease) Complete(ctx context.Context, response []byte) error {
	n, err := l.s.complete.Run(ctx, l.s.rdb, []string{l.rkey}, l.token, encodeDone(l.fp, response), l.s.keepMs).Int()
	return l.check("complete", n, err)
}

// Release deletes the key so the next Acquire takes it. It returns an error
// wrapping idempotency.ErrLeaseLost when the lease had expired or was ended
// before.
func (l *Lease) Release(ctx context.Context) error {
	n, err := l.s.release.Run(ctx, l.s.rdb, []string{l.rkey}, l.token).Int()
	return l.check("release", n, err)
}

func (l *Lease) check(op string, n int, err error) error {
	switch {
	case err != nil:
		return fmt.Errorf("idempotency/redis: %s scope %q key %q: %w", op, l.scope, l.key, err)
	case n == 0:
		return fmt.Errorf("idempotency/redis: %s scope %q key %q: %w", op, l.scope, l.key, idempotency.ErrLeaseLost)
	}
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
