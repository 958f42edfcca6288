package broker

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestBackoffSchedule(t *testing.T) {
	exact := Backoff{Jitter: -1}
	want := []time.Duration{100, 200, 400, 800, 1600}
	for i, w := range want {
		if got := exact.Delay(i + 1); got != w*time.Millisecond {
			t.Errorf("Delay(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := exact.Delay(0); got != 100*time.Millisecond {
		t.Errorf("Delay(0) = %v", got)
	}
	if got := exact.Delay(math.MaxInt); got != DefaultBackoffMax {
		t.Errorf("Delay(MaxInt) = %v, want the cap", got)
	}
	if got := ConstantBackoff(time.Second).Delay(50); got != time.Second {
		t.Errorf("constant: %v", got)
	}
	// Jitter only shortens, by at most the fraction.
	j := Backoff{Initial: time.Second, Max: time.Second, Jitter: 0.5}
	if got := j.delay(1, func() float64 { return 0.999 }); got < 500*time.Millisecond || got > time.Second {
		t.Errorf("jittered delay %v outside [0.5s, 1s]", got)
	}
}

func TestBackoffValidate(t *testing.T) {
	bad := []Backoff{
		{Initial: -1}, {Max: -1}, {Multiplier: 0.5}, {Multiplier: math.Inf(1)}, {Multiplier: math.NaN()},
		{Jitter: 1.5}, {Jitter: math.NaN()}, {Initial: time.Minute, Max: time.Second},
	}
	for _, b := range bad {
		if err := b.Validate(); !errors.Is(err, ErrInvalidBackoff) {
			t.Errorf("%+v: Validate() = %v, want ErrInvalidBackoff", b, err)
		}
	}
	for _, b := range []Backoff{{}, {Jitter: -1}, ConstantBackoff(time.Millisecond), {Initial: time.Hour}} {
		if err := b.Validate(); err != nil {
			t.Errorf("%+v: %v", b, err)
		}
	}
}

// TestBackoffWithDefaultsIdempotent: filling in the defaults of a schedule
// whose defaults are filled in changes nothing, so "no jitter" survives
// being passed through a config that fills defaults before handing it on.
func TestBackoffWithDefaultsIdempotent(t *testing.T) {
	for _, b := range []Backoff{{}, {Jitter: -1}, {Initial: time.Second, Multiplier: 1.5, Jitter: 0.5}, ConstantBackoff(time.Millisecond)} {
		once := b.WithDefaults()
		if twice := once.WithDefaults(); twice != once {
			t.Errorf("%+v: WithDefaults twice = %+v, once = %+v", b, twice, once)
		}
		if once.Delay(3) != b.WithDefaults().Delay(3) && b.Jitter < 0 {
			t.Errorf("%+v: delays differ after WithDefaults", b)
		}
	}
	if got := (Backoff{Jitter: -1}).WithDefaults().WithDefaults().Delay(2); got != 200*time.Millisecond {
		t.Errorf("no-jitter schedule after two WithDefaults: Delay(2) = %v, want exactly 200ms", got)
	}
}

// FuzzBackoff: whatever the fields and attempt, Delay is within [0, cap].
func FuzzBackoff(f *testing.F) {
	f.Add(int64(0), int64(0), 0.0, 0.0, 1)
	f.Add(int64(math.MaxInt64), int64(math.MaxInt64), 1e308, 1.0, math.MaxInt)
	f.Add(int64(-5), int64(3), -2.0, -1.0, -7)
	f.Fuzz(func(t *testing.T, initial, maxD int64, mult, jitter float64, attempt int) {
		b := Backoff{Initial: time.Duration(initial), Max: time.Duration(maxD), Multiplier: mult, Jitter: jitter}
		d := b.Delay(attempt)
		ceil := max(b.WithDefaults().Max, b.WithDefaults().Initial, 0)
		if d < 0 || d > ceil {
			t.Fatalf("%+v.Delay(%d) = %v, outside [0, %v]", b, attempt, d, ceil)
		}
	})
}
