package dlq

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestPolicyBackoffExponentialCapped(t *testing.T) {
	p := Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, NoJitter: true}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Backoff(i + 1); got != w*time.Millisecond {
			t.Errorf("Backoff(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := p.Backoff(0); got != 100*time.Millisecond {
		t.Errorf("Backoff(0) = %v, want the first wait", got)
	}
	if got := p.Backoff(10_000); got != time.Second {
		t.Errorf("Backoff(10000) = %v, want the cap (no overflow)", got)
	}
}

func TestPolicyJitterStaysWithinBounds(t *testing.T) {
	p := Policy{InitialBackoff: time.Second, MaxBackoff: 10 * time.Second, Jitter: 0.5}.WithDefaults()
	// The extremes of the random source give the bounds exactly.
	if got := p.backoff(2, func() float64 { return 0 }); got != 2*time.Second {
		t.Errorf("no jitter draw = %v, want 2s", got)
	}
	if got := p.backoff(2, func() float64 { return 0.999999 }); got < time.Second || got > 1001*time.Millisecond {
		t.Errorf("full jitter draw = %v, want about 1s", got)
	}
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := p.Backoff(5) // 16s capped to 10s, jittered into [5s, 10s]
		if d < 5*time.Second || d > 10*time.Second {
			t.Fatalf("Backoff(5) = %v outside [5s, 10s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct jittered waits in 1000 draws", len(seen))
	}
}

func TestPolicyDefaults(t *testing.T) {
	p := Policy{}.WithDefaults()
	if p.MaxAttempts != 5 || p.InitialBackoff != 100*time.Millisecond || p.MaxBackoff != 30*time.Second ||
		p.Multiplier != 2 || p.Jitter != 0.2 {
		t.Errorf("defaults = %+v", p)
	}
	if p := (Policy{NoJitter: true}).WithDefaults(); p.Jitter != 0 {
		t.Errorf("NoJitter kept jitter %v", p.Jitter)
	}
	if p := (Policy{InitialBackoff: time.Minute}).WithDefaults(); p.MaxBackoff != time.Minute {
		t.Errorf("MaxBackoff default below a large InitialBackoff: %v", p.MaxBackoff)
	}
	if err := (Policy{}).Validate(); err != nil {
		t.Errorf("zero policy invalid: %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []Policy{
		{MaxAttempts: -1},
		{InitialBackoff: -time.Second},
		{MaxBackoff: -time.Second},
		{Multiplier: 0.5},
		{Jitter: 1.5},
		{Jitter: -0.1},
		{InitialBackoff: time.Second, MaxBackoff: time.Millisecond},
	}
	for _, p := range bad {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			if err := p.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate() = %v, want ErrInvalidConfig", err)
			}
		})
	}
}

type decodeError struct{ field string }

func (e *decodeError) Error() string { return "cannot decode " + e.field }

func TestClassification(t *testing.T) {
	base := &decodeError{field: "amount"}
	perm := Permanent(fmt.Errorf("order 7: %w", base))
	if !errors.Is(perm, ErrPermanent) {
		t.Fatal("Permanent error does not match ErrPermanent")
	}
	var de *decodeError
	if !errors.As(perm, &de) || de.field != "amount" {
		t.Fatal("errors.As does not reach the wrapped error")
	}
	if perm.Error() != "order 7: cannot decode amount" {
		t.Errorf("text = %q", perm.Error())
	}
	if Classify(perm) != ClassPermanent || Classify(fmt.Errorf("handler: %w", perm)) != ClassPermanent {
		t.Error("wrapped permanent errors must classify as permanent")
	}
	if Classify(errors.New("timeout")) != ClassTransient {
		t.Error("plain errors must be transient")
	}
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	if Permanent(perm) != perm {
		t.Error("Permanent of a permanent error wraps again")
	}
	if !errors.Is(Permanentf("bad %d", 1), ErrPermanent) {
		t.Error("Permanentf is not permanent")
	}

	custom := Classifier(func(err error) Class {
		var de *decodeError
		if errors.As(err, &de) {
			return ClassPermanent
		}
		return Classify(err)
	})
	if custom(fmt.Errorf("x: %w", base)) != ClassPermanent || custom(errors.New("y")) != ClassTransient {
		t.Error("custom classifier")
	}
	for _, c := range []Class{ClassTransient, ClassPermanent} {
		got, err := ParseClass(c.String())
		if err != nil || got != c {
			t.Errorf("ParseClass(%q) = %v, %v", c.String(), got, err)
		}
	}
	if _, err := ParseClass("sometimes"); !errors.Is(err, ErrMalformedEnvelope) {
		t.Errorf("ParseClass(bad) = %v", err)
	}
}
