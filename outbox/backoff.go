package outbox

import (
	"math/rand/v2"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// ExponentialBackoff returns a backoff function for Config.Backoff: base
// before the first retry, doubling with each attempt up to max, with up to
// 20% random jitter either way so that rows that failed together do not
// retry together. attempt is the number of failed attempts so far (1 after
// the first failure).
//
// It is a pure function of the attempt number rather than a stateful
// iterator because the attempt count lives in the outbox row and survives
// relay restarts.
func ExponentialBackoff(base, max time.Duration) func(attempt int) time.Duration {
	doubling := broker.DoublingBackoff(base, max)
	return func(attempt int) time.Duration {
		d := doubling(attempt)
		jitter := time.Duration((rand.Float64()*0.4 - 0.2) * float64(d))
		return d + jitter
	}
}
