package dlq

import (
	"cmp"
	"fmt"

	"github.com/steadfast-go/steadfast/broker"
)

// DefaultMaxAttempts is the default Policy.MaxAttempts.
const DefaultMaxAttempts = 5

// Policy bounds how often and how fast a failing message is retried. The
// zero value is ready to use: 5 attempts, waits of 100ms, 200ms, 400ms and
// 800ms, each shortened by up to 20% at random (broker.Backoff's defaults).
type Policy struct {
	// MaxAttempts is the number of handler attempts a message gets before
	// it is dead-lettered: 1 means no retries. Default DefaultMaxAttempts.
	MaxAttempts int
	// Backoff is the wait after each failed attempt, by the attempt's
	// number (Policy.Delay). Zero fields take broker.Backoff's defaults:
	// 100ms, doubling, at most 30s, each wait shortened by up to 20% at
	// random so that retries of messages that failed together spread out;
	// a negative Jitter makes every wait exact.
	broker.Backoff
}

// WithDefaults returns p with its zero fields set to their defaults.
func (p Policy) WithDefaults() Policy {
	p.MaxAttempts = cmp.Or(p.MaxAttempts, DefaultMaxAttempts)
	p.Backoff = p.Backoff.WithDefaults()
	return p
}

// Validate reports a field out of range, wrapping ErrInvalidConfig (and
// broker.ErrInvalidBackoff for the Backoff fields). Zero fields are valid
// (they take their defaults).
func (p Policy) Validate() error {
	if p.MaxAttempts < 0 {
		return fmt.Errorf("%w: Policy.MaxAttempts %d < 0", ErrInvalidConfig, p.MaxAttempts)
	}
	if err := p.Backoff.Validate(); err != nil {
		return fmt.Errorf("%w: Policy: %w", ErrInvalidConfig, err)
	}
	return nil
}
