package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/steadfast-go/steadfast/broker"
)

func TestNormalize(t *testing.T) {
	in := []broker.Message{
		{Topic: "a", Payload: []byte("x")},
		{ID: "given", Topic: "a", Time: time.Unix(1, 0)},
	}
	out, err := broker.Normalize(in, 0)
	if err != nil {
		t.Fatal(err)
	}
	id, err := uuid.Parse(out[0].ID)
	if err != nil || id.Version() != 7 {
		t.Errorf("default ID %q is not a UUIDv7 (%v)", out[0].ID, err)
	}
	if out[0].Time.IsZero() {
		t.Error("zero time not filled")
	}
	if out[1].ID != "given" || !out[1].Time.Equal(time.Unix(1, 0)) {
		t.Errorf("given ID/time changed: %+v", out[1])
	}
	if in[0].ID != "" {
		t.Error("Normalize modified its input")
	}
}

func TestNormalizeRejectsWholeBatch(t *testing.T) {
	_, err := broker.Normalize([]broker.Message{{Topic: "a"}, {Topic: ""}}, 0)
	if !errors.Is(err, broker.ErrEmptyTopic) || !strings.Contains(err.Error(), "message 1") {
		t.Fatalf("err = %v, want ErrEmptyTopic naming message 1", err)
	}
	big := broker.Message{Topic: "a", Key: "k", Payload: make([]byte, 8), Headers: map[string]string{"h": "v"}}
	// The ID counts: the 36 bytes of the UUID Normalize fills in when empty.
	if big.Size() != 47 {
		t.Fatalf("Size = %d, want 47", big.Size())
	}
	if _, err := broker.Normalize([]broker.Message{big}, 46); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if _, err := broker.Normalize([]broker.Message{big}, 47); err != nil {
		t.Fatalf("message at the limit rejected: %v", err)
	}
	hugeID := broker.Message{Topic: "a", ID: strings.Repeat("i", 2<<20)}
	if _, err := broker.Normalize([]broker.Message{hugeID}, 0); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("a 2 MiB ID: err = %v, want ErrMessageTooLarge", err)
	}
	// ValidateBatch applies the same checks without copying or filling.
	batch := []broker.Message{{Topic: "a"}, big}
	if err := broker.ValidateBatch(batch, 46); !errors.Is(err, broker.ErrMessageTooLarge) || !strings.Contains(err.Error(), "message 1") {
		t.Fatalf("ValidateBatch err = %v, want ErrMessageTooLarge naming message 1", err)
	}
	if err := broker.ValidateBatch(batch, 47); err != nil || batch[0].ID != "" || !batch[0].Time.IsZero() {
		t.Fatalf("ValidateBatch = %v and left %+v; want nil and the batch unchanged", err, batch[0])
	}
}

func TestCheckSubscribe(t *testing.T) {
	h := func(context.Context, broker.Delivery) error { return nil }
	for _, c := range []struct {
		sub  broker.Subscription
		h    broker.Handler
		want error
	}{
		{broker.Subscription{Topic: "t", Group: "g"}, nil, broker.ErrNilHandler},
		{broker.Subscription{Group: "g"}, h, broker.ErrEmptyTopic},
		{broker.Subscription{Topic: "t"}, h, broker.ErrEmptyGroup},
		{broker.Subscription{Topic: "t", Group: "g", Concurrency: -2}, h, broker.ErrInvalidSubscription},
		{broker.Subscription{Topic: "t", Group: "g"}, h, nil},
	} {
		if err := broker.CheckSubscribe(c.sub, c.h); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("CheckSubscribe(%+v) = %v, want %v", c.sub, err, c.want)
		}
	}
	if got := (broker.Subscription{}).WithDefaults().Concurrency; got != broker.DefaultConcurrency {
		t.Errorf("default concurrency = %d", got)
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
