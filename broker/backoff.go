package broker

import "time"

// DoublingBackoff returns a retry backoff for handlers and relays: base
// after the first failure (attempt 1), doubling with each further attempt,
// never above max. It is a pure function of the attempt number, so the
// count can live wherever the caller keeps it (a delivery, a database row).
// A base of zero or less counts as one millisecond, a max below base as
// base.
func DoublingBackoff(base, max time.Duration) func(attempt int) time.Duration {
	if base <= 0 {
		base = time.Millisecond
	}
	if max < base {
		max = base
	}
	return func(attempt int) time.Duration {
		d := base
		for i := 1; i < attempt && d < max; i++ {
			d *= 2
		}
		return min(d, max)
	}
}
