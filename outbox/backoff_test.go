package outbox_test

import (
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/outbox"
)

func TestExponentialBackoff(t *testing.T) {
	f := outbox.ExponentialBackoff(100*time.Millisecond, time.Second)
	for _, c := range []struct {
		attempt int
		nominal time.Duration
	}{{0, 100 * time.Millisecond}, {1, 100 * time.Millisecond}, {2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond}, {5, time.Second}, {60, time.Second}} {
		for range 50 {
			d := f(c.attempt)
			if lo, hi := c.nominal*8/10, c.nominal*12/10; d < lo || d > hi {
				t.Fatalf("attempt %d: %v outside [%v, %v]", c.attempt, d, lo, hi)
			}
		}
	}
	if d := outbox.ExponentialBackoff(0, 0)(3); d <= 0 {
		t.Errorf("degenerate bounds gave %v", d)
	}
}
