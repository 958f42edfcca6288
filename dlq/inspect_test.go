package dlq_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/dlq"
)

func deadLetter(id string, failed time.Time) dlq.DeadLetter {
	h := map[string]string{"type": "OrderPlaced"}
	dlq.Envelope{ID: id, Topic: "orders", Key: "k-" + id, Group: "g", Attempts: 3, Error: "boom",
		FirstFailure: failed.Add(-time.Second), LastFailure: failed, Time: failed.Add(-time.Hour),
		Partition: 1, Offset: 9}.SetHeaders(h)
	return dlq.NewDeadLetter(broker.Message{ID: id, Topic: "orders.g.dlq", Key: "k-" + id, Payload: []byte(id), Headers: h, Time: failed}, "1/9")
}

func TestFilter(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	dls := []dlq.DeadLetter{deadLetter("a", t0), deadLetter("b", t0.Add(time.Minute)), deadLetter("c", t0.Add(2*time.Minute))}
	ids := func(dls []dlq.DeadLetter) string {
		var s []string
		for _, dl := range dls {
			s = append(s, dl.ID())
		}
		return strings.Join(s, ",")
	}
	cases := []struct {
		f    dlq.Filter
		want string
	}{
		{dlq.Filter{}, "a,b,c"},
		{dlq.Filter{IDs: []string{"c", "a"}}, "a,c"},
		{dlq.Filter{From: t0.Add(time.Minute)}, "b,c"},
		{dlq.Filter{To: t0.Add(time.Minute)}, "a"},
		{dlq.Filter{From: t0, To: t0.Add(90 * time.Second)}, "a,b"},
		{dlq.Filter{Limit: 2}, "a,b"},
		{dlq.Filter{IDs: []string{"b", "c"}, Limit: 1}, "b"},
	}
	for _, c := range cases {
		if got := ids(c.f.Select(dls)); got != c.want {
			t.Errorf("%+v selects %q, want %q", c.f, got, c.want)
		}
	}
	if !(dlq.Filter{}).All() || (dlq.Filter{Limit: 1}).All() {
		t.Error("All")
	}
	for _, f := range []dlq.Filter{{Limit: -1}, {From: t0, To: t0}} {
		if err := f.Validate(); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v", f, err)
		}
	}
	// Without an envelope the message time counts.
	plain := dlq.NewDeadLetter(broker.Message{ID: "p", Time: t0}, "0/1")
	if !errors.Is(plain.EnvelopeErr, dlq.ErrNoEnvelope) || !plain.FailedAt().Equal(t0) || plain.ID() != "p" {
		t.Errorf("plain dead letter %+v", plain)
	}
}

func TestReplayMessage(t *testing.T) {
	now := time.Now()
	dl := deadLetter("a", now.Add(-time.Minute))
	m, err := dlq.ReplayMessage(dl, dlq.ReplayOptions{}, now)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "a" || m.Topic != "orders" || m.Key != "k-a" || string(m.Payload) != "a" || !m.Time.Equal(dl.Envelope.Time) {
		t.Errorf("replay message %+v", m)
	}
	if m.Headers["type"] != "OrderPlaced" || m.Headers[dlq.HeaderReplays] != "1" || m.Headers[dlq.HeaderReplayedAt] == "" {
		t.Errorf("headers %v", m.Headers)
	}
	if _, err := dlq.ParseEnvelope(m.Headers); !errors.Is(err, dlq.ErrNoEnvelope) {
		t.Errorf("replayed message keeps its envelope: %v", err)
	}
	// A second replay counts up; a topic override wins.
	dl2 := dlq.NewDeadLetter(broker.Message{ID: "a", Headers: m.Headers}, "")
	dl2.Envelope.Topic = "orders"
	m2, err := dlq.ReplayMessage(dl2, dlq.ReplayOptions{Topic: "orders.audit"}, now)
	if err != nil || m2.Topic != "orders.audit" || m2.Headers[dlq.HeaderReplays] != "2" {
		t.Errorf("second replay %+v, %v", m2, err)
	}
	if _, err := dlq.ReplayMessage(dlq.NewDeadLetter(broker.Message{ID: "x"}, "0/3"), dlq.ReplayOptions{}, now); !errors.Is(err, dlq.ErrNoDestination) {
		t.Errorf("replay without topic: %v", err)
	}
}

// TestReplayAfterFix: dead letters replayed to the original topic are
// handled by the fixed handler from attempt 1, with the replay headers and
// without the envelope.
func TestReplayAfterFix(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	msgs, bad := stream(t, b, "orders", 100, 5)
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: fastPolicy})
	fixed := make(chan struct{})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g", Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			select {
			case <-fixed:
			default:
				if bad[d.ID] {
					return errors.New("bug")
				}
			}
			if bad[d.ID] {
				if d.Attempt != 1 || d.Headers[dlq.HeaderReplays] != "1" || d.Headers[dlq.HeaderAttempts] != "" {
					t.Errorf("replayed delivery %+v", d)
				}
			}
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "dead letters", func() bool { return len(b.Published("orders.g.dlq")) == 5 && rec.successes() == 95 })
	close(fixed)
	for _, m := range b.Published("orders.g.dlq") {
		r, err := dlq.ReplayMessage(dlq.NewDeadLetter(m, ""), dlq.ReplayOptions{}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "replays", func() bool { return rec.successes() == 100 && b.Pending("orders", "g") == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		want := 1
		if bad[m.ID] {
			want = fastPolicy.MaxAttempts + 1
		}
		if got := len(rec.of(m.ID)); got != want {
			t.Errorf("message %s handled %d times, want %d", m.ID, got, want)
		}
	}
}
