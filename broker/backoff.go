package broker

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// ErrInvalidBackoff is wrapped by Backoff.Validate's errors.
var ErrInvalidBackoff = errors.New("broker: invalid backoff")

// Backoff defaults, used for zero fields.
const (
	DefaultBackoffInitial    = 100 * time.Millisecond
	DefaultBackoffMax        = 30 * time.Second
	DefaultBackoffMultiplier = 2.0
	DefaultBackoffJitter     = 0.2
)

// Backoff is the one retry schedule of every steadfast package: handler
// retries, relay retries, reconnects, poll loops, saga step retries. The wait
// after failed attempt n (1-based) is Initial × Multiplier^(n-1), capped at
// Max, then shortened by a random fraction of at most Jitter, so that work
// that failed together does not retry together and no wait exceeds Max.
//
// It is a value, a pure function of the attempt number rather than a
// stateful iterator, so the count can live wherever the caller keeps it (a
// delivery, a database row) and survive restarts.
//
// The zero value is ready to use: 100ms, 200ms, 400ms, ... up to 30s, each
// shortened by up to 20%. Zero fields take their defaults; a negative
// Jitter turns jitter off (the steadfast convention for "disabled").
type Backoff struct {
	// Initial is the wait after the first failed attempt. Default 100ms.
	Initial time.Duration
	// Max caps every wait. Default 30s, or Initial when Initial is larger.
	// It must not be below Initial.
	Max time.Duration
	// Multiplier grows the wait after each further failure. Default 2; it
	// must be at least 1 (1 gives a constant wait).
	Multiplier float64
	// Jitter is the fraction of each wait chosen at random, in [0, 1]: a
	// wait w becomes a uniform draw from [w×(1-Jitter), w]. Default 0.2;
	// negative means none (every wait exact, for deterministic schedules).
	Jitter float64
}

// ConstantBackoff returns a Backoff that always waits d, without jitter.
func ConstantBackoff(d time.Duration) Backoff {
	return Backoff{Initial: d, Max: d, Multiplier: 1, Jitter: -1}
}

// Validate reports a field out of range with an error wrapping
// ErrInvalidBackoff. Zero fields are valid (they take their defaults).
func (b Backoff) Validate() error {
	switch {
	case b.Initial < 0:
		return fmt.Errorf("%w: Initial %v < 0", ErrInvalidBackoff, b.Initial)
	case b.Max < 0:
		return fmt.Errorf("%w: Max %v < 0", ErrInvalidBackoff, b.Max)
	case b.Multiplier != 0 && !(b.Multiplier >= 1 && !math.IsInf(b.Multiplier, 0)):
		return fmt.Errorf("%w: Multiplier %v must be a finite number of at least 1", ErrInvalidBackoff, b.Multiplier)
	case math.IsNaN(b.Jitter) || b.Jitter > 1:
		return fmt.Errorf("%w: Jitter %v above 1", ErrInvalidBackoff, b.Jitter)
	}
	if d := b.WithDefaults(); d.Max < d.Initial {
		return fmt.Errorf("%w: Max %v < Initial %v", ErrInvalidBackoff, d.Max, d.Initial)
	}
	return nil
}

// WithDefaults returns b with zero fields set to their defaults. A negative
// Jitter is kept (no jitter), so WithDefaults is idempotent: a schedule with
// its defaults filled in is the same schedule.
func (b Backoff) WithDefaults() Backoff {
	if b.Initial == 0 {
		b.Initial = DefaultBackoffInitial
	}
	if b.Max == 0 {
		b.Max = max(DefaultBackoffMax, b.Initial)
	}
	if b.Multiplier == 0 {
		b.Multiplier = DefaultBackoffMultiplier
	}
	if b.Jitter == 0 {
		b.Jitter = DefaultBackoffJitter
	}
	return b
}

// Delay returns the wait after failed attempt number attempt (1-based;
// values below 1 count as 1). It never returns a negative duration or more
// than Max, whatever the fields and the attempt number: invalid fields are
// clamped (see Validate to reject them instead) and the arithmetic cannot
// overflow.
func (b Backoff) Delay(attempt int) time.Duration {
	return b.delay(attempt, rand.Float64)
}

// delay is Delay with the random source given (uniform in [0, 1)).
func (b Backoff) delay(attempt int, random func() float64) time.Duration {
	b = b.WithDefaults()
	initial, ceil := max(b.Initial, 0), max(b.Max, 0)
	if ceil < initial {
		ceil = initial
	}
	mult := b.Multiplier
	if !(mult >= 1) || math.IsInf(mult, 0) {
		mult = 1
	}
	jitter := min(max(b.Jitter, 0), 1)
	if math.IsNaN(jitter) {
		jitter = 0
	}
	attempt = max(attempt, 1)
	// Float64 holds every Duration to within a rounding error; Pow of a huge
	// exponent is +Inf, which the cap catches.
	w := float64(initial) * math.Pow(mult, float64(attempt-1))
	if math.IsNaN(w) || w > float64(ceil) {
		w = float64(ceil)
	}
	if jitter > 0 {
		w -= w * jitter * random()
	}
	d := time.Duration(w)
	if d < 0 || d > ceil { // float rounding at the very top of the range
		d = ceil
	}
	return d
}
