package dlq

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// Policy bounds how often and how fast a failing message is retried. The
// zero value is ready to use: 5 attempts, waits of 100ms, 200ms, 400ms and
// 800ms, each shortened by up to 20% at random.
type Policy struct {
	// MaxAttempts is the number of handler attempts a message gets before
	// it is dead-lettered: 1 means no retries. Default 5.
	MaxAttempts int
	// InitialBackoff is the wait after the first failed attempt. Default
	// 100ms.
	InitialBackoff time.Duration
	// MaxBackoff caps every wait. Default 30s. It must not be below
	// InitialBackoff.
	MaxBackoff time.Duration
	// Multiplier grows the wait after each further failed attempt. Default
	// 2; it must be at least 1.
	Multiplier float64
	// Jitter is the fraction of each wait chosen at random, in [0, 1]: a
	// wait w becomes a uniform draw from [w*(1-Jitter), w], so retries of
	// messages that failed together spread out while no wait exceeds
	// MaxBackoff. Default 0.2; see NoJitter.
	Jitter float64
	// NoJitter makes every wait exactly the exponential value, for
	// deterministic schedules.
	NoJitter bool
}

// Policy defaults.
const (
	DefaultMaxAttempts    = 5
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultMultiplier     = 2.0
	DefaultJitter         = 0.2
)

// WithDefaults returns p with its zero fields set to their defaults.
func (p Policy) WithDefaults() Policy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialBackoff == 0 {
		p.InitialBackoff = DefaultInitialBackoff
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = max(DefaultMaxBackoff, p.InitialBackoff)
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.Jitter == 0 && !p.NoJitter {
		p.Jitter = DefaultJitter
	}
	if p.NoJitter {
		p.Jitter = 0
	}
	return p
}

// Validate reports a field out of range, wrapping ErrInvalidConfig. Zero
// fields are valid (they take their defaults).
func (p Policy) Validate() error {
	switch {
	case p.MaxAttempts < 0:
		return fmt.Errorf("%w: Policy.MaxAttempts %d < 0", ErrInvalidConfig, p.MaxAttempts)
	case p.InitialBackoff < 0 || p.MaxBackoff < 0:
		return fmt.Errorf("%w: Policy: negative backoff", ErrInvalidConfig)
	case p.Multiplier != 0 && (p.Multiplier < 1 || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0)):
		return fmt.Errorf("%w: Policy.Multiplier %v must be at least 1", ErrInvalidConfig, p.Multiplier)
	case p.Jitter < 0 || p.Jitter > 1 || math.IsNaN(p.Jitter):
		return fmt.Errorf("%w: Policy.Jitter %v outside [0, 1]", ErrInvalidConfig, p.Jitter)
	}
	d := p.WithDefaults()
	if d.MaxBackoff < d.InitialBackoff {
		return fmt.Errorf("%w: Policy.MaxBackoff %v < InitialBackoff %v", ErrInvalidConfig, d.MaxBackoff, d.InitialBackoff)
	}
	return nil
}

// Backoff returns how long to wait after attempt (1-based) failed before the
// next attempt: InitialBackoff × Multiplier^(attempt-1), capped at
// MaxBackoff, then shortened by a random fraction of at most Jitter. Zero
// fields take their defaults; attempt values below 1 count as 1.
func (p Policy) Backoff(attempt int) time.Duration {
	p = p.WithDefaults()
	return p.backoff(attempt, rand.Float64)
}

// backoff is Backoff on a policy with defaults, with the random source
// given (a function returning a uniform value in [0, 1)).
func (p Policy) backoff(attempt int, random func() float64) time.Duration {
	attempt = max(attempt, 1)
	w := float64(p.InitialBackoff) * math.Pow(p.Multiplier, float64(attempt-1))
	if math.IsInf(w, 0) || math.IsNaN(w) || w > float64(p.MaxBackoff) {
		w = float64(p.MaxBackoff)
	}
	if p.Jitter > 0 {
		w -= w * p.Jitter * random()
	}
	return time.Duration(w)
}
