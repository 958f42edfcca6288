package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// TestMessageValidate: an empty topic and a message over the limit are
// rejected with their sentinels; a message at the limit passes.
func TestMessageValidate(t *testing.T) {
	if err := (broker.Message{Payload: []byte("x")}).Validate(0); !errors.Is(err, broker.ErrEmptyTopic) {
		t.Fatalf("err = %v, want ErrEmptyTopic", err)
	}
	big := broker.Message{Topic: "a", Key: "k", Payload: make([]byte, 8), Headers: map[string]string{"h": "v"}}
	// The ID counts: the 36 bytes of the UUID Normalize fills in when empty.
	if big.Size() != 47 {
		t.Fatalf("Size = %d, want 47", big.Size())
	}
	if err := big.Validate(46); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if err := big.Validate(47); err != nil {
		t.Fatalf("message at the limit rejected: %v", err)
	}
	hugeID := broker.Message{Topic: "a", ID: strings.Repeat("i", 2<<20)}
	if err := hugeID.Validate(0); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("a 2 MiB ID: err = %v, want ErrMessageTooLarge", err)
	}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) broker.Middleware {
		return func(next broker.Handler) broker.Handler {
			return func(ctx context.Context, d broker.Delivery) error {
				trace = append(trace, name+">")
				err := next(ctx, d)
				trace = append(trace, "<"+name)
				return err
			}
		}
	}
	h := broker.Chain(func(context.Context, broker.Delivery) error {
		trace = append(trace, "h")
		return nil
	}, mw("a"), nil, mw("b"))
	if err := h(context.Background(), broker.Delivery{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(trace, " "); got != "a> b> h <b <a" {
		t.Fatalf("trace = %q", got)
	}
}

func TestPublishError(t *testing.T) {
	cause := errors.New("timeout")
	msgs := []broker.Message{{ID: "0"}, {ID: "1"}, {ID: "2"}}
	var err error = &broker.PublishError{Failures: []broker.PublishFailure{{Index: 2, ID: "2", Err: cause}}}
	if !errors.Is(err, cause) {
		t.Error("errors.Is does not see the cause")
	}
	var pe *broker.PublishError
	if !errors.As(err, &pe) {
		t.Fatal("errors.As failed")
	}
	if f := pe.Failed(msgs); len(f) != 1 || f[0].ID != "2" {
		t.Errorf("Failed = %v", f)
	}
}

// Times every adapter carries exactly pass; others are refused up front
// rather than coming back as another date.
func TestValidateTime(t *testing.T) {
	for _, tm := range []time.Time{broker.MinTime, broker.MaxTime, time.Unix(1, 0), time.Date(2262, 4, 11, 0, 0, 0, 0, time.UTC)} {
		if err := (broker.Message{Topic: "t", Time: tm}).Validate(0); err != nil {
			t.Errorf("time %v: %v", tm, err)
		}
	}
	for _, tm := range []time.Time{time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC), time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC), broker.MinTime.Add(-1), broker.MaxTime.Add(1)} {
		if err := (broker.Message{Topic: "t", Time: tm}).Validate(0); !errors.Is(err, broker.ErrInvalidMessage) {
			t.Errorf("time %v: Validate = %v, want ErrInvalidMessage", tm, err)
		}
	}
}
