package idempotency

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// Sentinel errors. Stores and middleware wrap them, so callers test with
// errors.Is.
var (
	// ErrInProgress: another holder is processing the key right now. It is
	// not a duplicate: the other holder may still fail and release the key.
	// Retry later (a consumer returns the error so the broker redelivers; the
	// HTTP middleware answers 409 Conflict).
	ErrInProgress = errors.New("idempotency: key is being processed")
	// ErrLeaseLost: Complete or Release was called on a lease the store had
	// already ended: its time ran out and another holder may have taken the
	// key, or it was completed or released before.
	ErrLeaseLost = errors.New("idempotency: lease lost")
	// ErrInvalidKey: a scope or key is empty, too long, not valid UTF-8 or
	// contains a NUL byte.
	ErrInvalidKey = errors.New("idempotency: invalid key")
	// ErrNoKey: a KeyFunc found nothing to deduplicate a delivery on (a
	// missing header, a delivery without a Kafka offset). The delivery
	// cannot be processed safely; a retry will not help, so dead-letter it.
	ErrNoKey = errors.New("idempotency: no key for delivery")
	// ErrNilStore: a middleware or helper was given a nil Store.
	ErrNilStore = errors.New("idempotency: nil store")
	// ErrInvalidConfig: HTTPConfig.Validate found a setting out of range.
	ErrInvalidConfig = errors.New("idempotency: invalid config")
)

// Limits every Store enforces through CheckKey, so a key accepted by one
// backend is accepted by all of them.
const (
	MaxScopeBytes = 255
	MaxKeyBytes   = 1024
)

// Store is the port every deduplication backend implements: it records which
// keys have been processed, within a scope (the consumer name, or the HTTP
// API's name), and holds a key exclusively while it is being processed.
//
// Implementations: idempotency/postgres (durable, and able to claim inside
// the transaction of the business effect), idempotency/redis (fast,
// best-effort where Redis can lose writes) and idempotency/memory (one
// process, for tests). Each passes the suite in idempotency/idempotencytest.
type Store interface {
	// Acquire takes key in scope for processing. It returns exactly one of:
	//
	//   - a Lease, when the key was free: the caller processes, then ends
	//     the lease with Complete (the key is done) or Release (the key is
	//     free again, so a redelivery is processed);
	//   - a Record, when the key was completed before: the caller skips the
	//     work, and may replay the stored response;
	//   - an error wrapping ErrInProgress, when another holder has the key;
	//     or another error (bad key: ErrInvalidKey; backend failure), when
	//     nothing was claimed.
	//
	// fingerprint is stored with the key and handed back in the Record, so a
	// caller can tell a repeat of the same request from a different request
	// reusing the key. It may be nil.
	//
	// Among concurrent Acquire calls for one key, at most one gets a Lease
	// while that lease lasts.
	Acquire(ctx context.Context, scope, key string, fingerprint []byte) (Lease, *Record, error)
}

// Lease is a key held for processing. Exactly one of Complete and Release
// ends it; calling either again returns an error wrapping ErrLeaseLost.
//
// A store may end a lease its holder did not end: the Redis and memory
// stores after their configured lease time (another worker can then take the
// key over), the Postgres store when the holder's connection dies. Complete
// and Release on such a lease return an error wrapping ErrLeaseLost and
// change nothing.
type Lease interface {
	// Complete marks the key done and stores response with it (nil is
	// fine). Later Acquire calls return a Record until the store's retention
	// removes the key.
	Complete(ctx context.Context, response []byte) error
	// Release frees the key without marking it done.
	Release(ctx context.Context) error
}

// Record describes a key that was completed.
type Record struct {
	// Fingerprint is the fingerprint given to the Acquire that completed the
	// key.
	Fingerprint []byte
	// Response is what Complete stored.
	Response []byte
}

// CheckKey reports whether scope and key are acceptable to every Store: both
// non-empty valid UTF-8 without NUL bytes, at most MaxScopeBytes and
// MaxKeyBytes long. The error wraps ErrInvalidKey. Stores call it first.
func CheckKey(scope, key string) error {
	if err := checkPart("scope", scope, MaxScopeBytes); err != nil {
		return err
	}
	return checkPart("key", key, MaxKeyBytes)
}

func checkPart(what, s string, limit int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidKey, what)
	case len(s) > limit:
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrInvalidKey, what, len(s), limit)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidKey, what)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidKey, what)
		}
	}
	return nil
}

// cleanupTimeout bounds the Complete or Release a middleware runs after the
// work, on a context detached from the caller's cancellation.
const cleanupTimeout = 30 * time.Second

// detached returns a context that keeps ctx's values but not its
// cancellation, bounded by cleanupTimeout: ending a lease must not be skipped
// because the delivery's or request's context ended.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}
