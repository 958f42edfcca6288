package inspect_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/internal/inspect"
)

func pos(dls []dlq.DeadLetter) (s string) {
	for _, dl := range dls {
		s += dl.Position
	}
	return s
}

func TestSortByFailure(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	dl := func(p string, at time.Time) dlq.DeadLetter {
		return dlq.DeadLetter{Position: p, Envelope: dlq.Envelope{LastFailure: at}}
	}
	dls := []dlq.DeadLetter{dl("c", t0.Add(2*time.Minute)), dl("a", t0), dl("b", t0.Add(time.Minute)), dl("a2", t0)}
	inspect.SortByFailure(dls)
	if got := pos(dls); got != "aa2bc" {
		t.Errorf("SortByFailure: %s, want aa2bc (oldest first, equal times in order)", got)
	}
}

func TestReplayMessages(t *testing.T) {
	h := map[string]string{}
	dlq.Envelope{ID: "a", Topic: "orders", Attempts: 1}.SetHeaders(h)
	good := dlq.NewDeadLetter(broker.Message{ID: "a", Headers: h}, "0/1")
	orphan := dlq.NewDeadLetter(broker.Message{ID: "x"}, "0/2")
	msgs, from, errs := inspect.ReplayMessages([]dlq.DeadLetter{good, orphan}, dlq.ReplayOptions{}, time.Now())
	if len(msgs) != 1 || msgs[0].Topic != "orders" || pos(from) != "0/1" || len(errs) != 1 || !errors.Is(errs[0], dlq.ErrNoDestination) {
		t.Errorf("ReplayMessages = %v, %v, %v", msgs, pos(from), errs)
	}
}

func TestPublished(t *testing.T) {
	from := []dlq.DeadLetter{{Position: "a"}, {Position: "b"}, {Position: "c"}}
	pe := &broker.PublishError{Failures: []broker.PublishFailure{{Index: 1, Err: errors.New("nack")}}}
	for _, c := range []struct {
		err  error
		want string
	}{{nil, "abc"}, {pe, "ac"}, {fmt.Errorf("wrapped: %w", pe), "ac"}, {errors.New("connection lost"), ""}} {
		if got := pos(inspect.Published(from, c.err)); got != c.want {
			t.Errorf("Published(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}
