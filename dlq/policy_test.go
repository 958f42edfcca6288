package dlq

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

func TestPolicyBackoffExponentialCapped(t *testing.T) {
	p := Policy{Backoff: broker.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Jitter: -1}}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w*time.Millisecond {
			t.Errorf("Delay(%d) = %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	if got := p.Delay(0); got != 100*time.Millisecond {
		t.Errorf("Delay(0) = %v, want the first wait", got)
	}
	if got := p.Delay(10_000); got != time.Second {
		t.Errorf("Delay(10000) = %v, want the cap (no overflow)", got)
	}
}

func TestPolicyJitterStaysWithinBounds(t *testing.T) {
	p := Policy{Backoff: broker.Backoff{Initial: time.Second, Max: 10 * time.Second, Jitter: 0.5}}.WithDefaults()
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := p.Delay(5) // 16s capped to 10s, jittered into [5s, 10s]
		if d < 5*time.Second || d > 10*time.Second {
			t.Fatalf("Delay(5) = %v outside [5s, 10s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct jittered waits in 1000 draws", len(seen))
	}
}

func TestPolicyDefaults(t *testing.T) {
	p := Policy{}.WithDefaults()
	if p.MaxAttempts != 5 || p.Initial != 100*time.Millisecond || p.Max != 30*time.Second ||
		p.Multiplier != 2 || p.Jitter != 0.2 {
		t.Errorf("defaults = %+v", p)
	}
	// A negative Jitter (none) survives any number of WithDefaults, so a
	// policy handed on by a consumer keeps its exact schedule.
	if p := (Policy{Backoff: broker.Backoff{Jitter: -1}}).WithDefaults().WithDefaults(); p.Delay(2) != 200*time.Millisecond {
		t.Errorf("no-jitter policy: Delay(2) = %v, want exactly 200ms", p.Delay(2))
	}
	if p := (Policy{Backoff: broker.Backoff{Initial: time.Minute}}).WithDefaults(); p.Max != time.Minute {
		t.Errorf("Max default below a large Initial: %v", p.Max)
	}
	if err := (Policy{}).Validate(); err != nil {
		t.Errorf("zero policy invalid: %v", err)
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []Policy{
		{MaxAttempts: -1},
		{Backoff: broker.Backoff{Initial: -time.Second}},
		{Backoff: broker.Backoff{Max: -time.Second}},
		{Backoff: broker.Backoff{Multiplier: 0.5}},
		{Backoff: broker.Backoff{Jitter: 1.5}},
		{Backoff: broker.Backoff{Initial: time.Second, Max: time.Millisecond}},
	}
	for _, p := range bad {
		t.Run(fmt.Sprintf("%+v", p), func(t *testing.T) {
			if err := p.Validate(); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate() = %v, want ErrInvalidConfig", err)
			}
			if p.MaxAttempts == 0 && !errors.Is(p.Validate(), broker.ErrInvalidBackoff) {
				t.Errorf("Validate() = %v, want ErrInvalidBackoff too", p.Validate())
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
