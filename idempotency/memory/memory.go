// Package memory is an in-process idempotency.Store: the zero-infrastructure
// backend for tests and examples, and for a single process that needs no
// deduplication across restarts.
//
// Import it as idemmem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
//
// It keeps every key in a map guarded by a mutex. Guarantees hold within one
// Store value only; nothing survives the process, so a redelivery after a
// restart is processed again. It passes the idempotencytest suite, lease
// expiry included.
package memory

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/idempotency"
)

// ErrInvalidConfig is wrapped by New's errors.
var ErrInvalidConfig = errors.New("idempotency/memory: invalid config")

// Defaults for Config fields left zero.
const (
	DefaultLease     = time.Minute
	DefaultRetention = 24 * time.Hour
)

// Config tunes a Store. The zero value is ready to use; negative durations
// are invalid.
type Config struct {
	// Lease is how long a key stays held by an Acquire that neither
	// completes nor releases it; after that another Acquire takes the key
	// over and the first holder's Complete or Release returns
	// idempotency.ErrLeaseLost. Set it above your slowest handler. Default
	// DefaultLease (1 minute).
	Lease time.Duration
	// Retention is how long a completed key is remembered. Default
	// DefaultRetention (24h).
	Retention time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Store is an in-memory idempotency.Store, safe for concurrent use. Create
// it with New.
type Store struct {
	cfg     Config
	mu      sync.Mutex
	entries map[entryKey]*entry
	token   uint64
	ops     int
}

var _ idempotency.Store = (*Store)(nil)

type entryKey struct{ scope, key string }

type entry struct {
	done     bool
	token    uint64 // the holder's token while !done
	deadline time.Time
	fp, resp []byte
}

// New returns an empty Store. It returns an error wrapping
// ErrInvalidConfig for a negative duration.
func New(cfg Config) (*Store, error) {
	if cfg.Lease < 0 || cfg.Retention < 0 {
		return nil, fmt.Errorf("%w: negative Lease %v or Retention %v", ErrInvalidConfig, cfg.Lease, cfg.Retention)
	}
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	cfg.Retention = cmp.Or(cfg.Retention, DefaultRetention)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Store{cfg: cfg, entries: make(map[entryKey]*entry)}, nil
}

// sweepEvery is how many Acquire calls pass between two sweeps of expired
// entries.
const sweepEvery = 4096

// Acquire implements idempotency.Store.
func (s *Store) Acquire(ctx context.Context, scope, key string, fingerprint []byte) (idempotency.Lease, *idempotency.Record, error) {
	if err := idempotency.CheckKey(scope, key); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	if s.ops++; s.ops%sweepEvery == 0 {
		for k, e := range s.entries {
			if !now.Before(e.deadline) {
				delete(s.entries, k)
			}
		}
	}
	k := entryKey{scope, key}
	if e := s.entries[k]; e != nil && now.Before(e.deadline) {
		if !e.done {
			return nil, nil, fmt.Errorf("idempotency/memory: scope %q key %q: %w", scope, key, idempotency.ErrInProgress)
		}
		return nil, &idempotency.Record{Fingerprint: clone(e.fp), Response: clone(e.resp)}, nil
	}
	s.token++
	s.entries[k] = &entry{token: s.token, deadline: now.Add(s.cfg.Lease), fp: clone(fingerprint)}
	return &lease{s: s, k: k, token: s.token}, nil, nil
}

// Len returns how many keys the store holds, completed or in progress,
// expired ones not yet swept included.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

type lease struct {
	s     *Store
	k     entryKey
	token uint64
}

// held returns the entry while l still holds it. Callers hold s.mu.
func (l *lease) held(now time.Time) (*entry, error) {
	e := l.s.entries[l.k]
	if e == nil || e.done || e.token != l.token || !now.Before(e.deadline) {
		return nil, fmt.Errorf("idempotency/memory: scope %q key %q: %w", l.k.scope, l.k.key, idempotency.ErrLeaseLost)
	}
	return e, nil
}

func (l *lease) Complete(_ context.Context, response []byte) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	now := l.s.cfg.Now()
	e, err := l.held(now)
	if err != nil {
		return err
	}
	e.done, e.token, e.deadline, e.resp = true, 0, now.Add(l.s.cfg.Retention), clone(response)
	return nil
}

func (l *lease) Release(context.Context) error {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if _, err := l.held(l.s.cfg.Now()); err != nil {
		return err
	}
	delete(l.s.entries, l.k)
	return nil
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
