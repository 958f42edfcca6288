package brokerimpl_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

func TestNormalize(t *testing.T) {
	in := []broker.Message{
		{Topic: "a", Payload: []byte("x")},
		{ID: "given", Topic: "a", Time: time.Unix(1, 0)},
	}
	out, err := brokerimpl.Normalize(in, 0)
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
	_, err := brokerimpl.Normalize([]broker.Message{{Topic: "a"}, {Topic: ""}}, 0)
	if !errors.Is(err, broker.ErrEmptyTopic) || !strings.Contains(err.Error(), "message 1") {
		t.Fatalf("err = %v, want ErrEmptyTopic naming message 1", err)
	}
	// Size counts the ID: "i" (1) + key (1) + payload (40) + header (2). An
	// empty ID counts as the 36 bytes of the UUID that will fill it.
	big := broker.Message{ID: "i", Topic: "a", Key: "k", Payload: make([]byte, 40), Headers: map[string]string{"h": "v"}}
	if big.Size() != 44 {
		t.Fatalf("Size = %d, want 44", big.Size())
	}
	if _, err := brokerimpl.Normalize([]broker.Message{big}, 43); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if _, err := brokerimpl.Normalize([]broker.Message{big}, 44); err != nil {
		t.Fatalf("message at the limit rejected: %v", err)
	}
	// ValidateBatch applies the same checks without copying or filling.
	batch := []broker.Message{{Topic: "a"}, big}
	if err := brokerimpl.ValidateBatch(batch, 43); !errors.Is(err, broker.ErrMessageTooLarge) || !strings.Contains(err.Error(), "message 1") {
		t.Fatalf("ValidateBatch err = %v, want ErrMessageTooLarge naming message 1", err)
	}
	if err := brokerimpl.ValidateBatch(batch, 44); err != nil || batch[0].ID != "" || !batch[0].Time.IsZero() {
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
		{broker.Subscription{Topic: "t", Group: "g", Concurrency: broker.MaxConcurrency + 1}, h, broker.ErrInvalidSubscription},
		{broker.Subscription{Topic: "t", Group: "g", Concurrency: 1 << 40}, h, broker.ErrInvalidSubscription},
		{broker.Subscription{Topic: "t", Group: "g", Concurrency: broker.MaxConcurrency}, h, nil},
		{broker.Subscription{Topic: "t", Group: "g"}, h, nil},
	} {
		if err := brokerimpl.CheckSubscribe(c.sub, c.h); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("CheckSubscribe(%+v) = %v, want %v", c.sub, err, c.want)
		}
	}
	if got := brokerimpl.WithDefaults(broker.Subscription{}).Concurrency; got != broker.DefaultConcurrency {
		t.Errorf("default concurrency = %d", got)
	}
}

// TestHeaderEscaping: every message header survives the wire, and a wire
// name under the reserved prefix that is not an escaped message header is
// never delivered.
func TestHeaderEscaping(t *testing.T) {
	for _, k := range []string{"plain", "", "steadfast-", "steadfast-x", "steadfast-u-x", "steadfast-u-steadfast-x", "Steadfast-x"} {
		w := brokerimpl.WireHeader(k)
		if strings.HasPrefix(k, broker.ReservedHeaderPrefix) == (w == k) {
			t.Errorf("WireHeader(%q) = %q", k, w)
		}
		if got, ok := brokerimpl.MessageHeader(w); !ok || got != k {
			t.Errorf("MessageHeader(WireHeader(%q)) = %q, %v", k, got, ok)
		}
	}
	for _, w := range []string{"steadfast-id", "steadfast-time", "steadfast-future"} {
		if got, ok := brokerimpl.MessageHeader(w); ok {
			t.Errorf("MessageHeader(%q) = %q, true; want it dropped", w, got)
		}
	}
}
