package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
)

// deadlineStore is a Store whose every claim returns all its rows. With a
// positive life its claims implement outbox.ClaimDeadline with a deadline
// life after the claim and, like a store that ends them on its own, fail to
// complete after it.
type deadlineStore struct {
	recs []outbox.Record
	life time.Duration

	mu     sync.Mutex
	claim  *fakeClaim
	claims int
}

func (s *deadlineStore) Claim(context.Context, outbox.ClaimRequest) (outbox.Claim, error) {
	c := &fakeClaim{recs: s.recs}
	s.mu.Lock()
	s.claim = c
	s.claims++
	s.mu.Unlock()
	if s.life <= 0 {
		return c, nil
	}
	c.deadline = time.Now().Add(s.life)
	return &deadlineClaim{c}, nil
}

func (s *deadlineStore) last() *fakeClaim {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.claim
}

func (*deadlineStore) Stats(context.Context) (outbox.Stats, error)          { return outbox.Stats{}, nil }
func (*deadlineStore) Cleanup(context.Context, time.Time, int) (int, error) { return 0, nil }
func (*deadlineStore) Parked(context.Context, outbox.ParkedQuery) ([]outbox.Record, error) {
	return nil, nil
}
func (*deadlineStore) Redrive(context.Context, ...int64) (int, error) { return 0, nil }
func (*deadlineStore) Delete(context.Context, ...int64) (int, error)  { return 0, nil }

// fakeClaim records how it ended.
type fakeClaim struct {
	recs     []outbox.Record
	deadline time.Time // zero: none

	mu       sync.Mutex
	ended    string // "complete" or "release"
	endedAt  time.Time
	outcome  outbox.Outcome
	endCalls int
}

func (c *fakeClaim) Records() []outbox.Record { return c.recs }

func (c *fakeClaim) end(how string, o outbox.Outcome) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endCalls++
	c.ended, c.endedAt, c.outcome = how, time.Now(), o
	if !c.deadline.IsZero() && c.endedAt.After(c.deadline) {
		return fmt.Errorf("claim lost: %s %v after its deadline", how, c.endedAt.Sub(c.deadline))
	}
	return nil
}

func (c *fakeClaim) Complete(_ context.Context, o outbox.Outcome) error { return c.end("complete", o) }
func (c *fakeClaim) Release(context.Context) error                      { return c.end("release", outbox.Outcome{}) }

// deadlineClaim is a fakeClaim that reports its deadline.
type deadlineClaim struct{ *fakeClaim }

func (c *deadlineClaim) Deadline() (time.Time, bool) { return c.deadline, true }

// slowSingles is a publisher that refuses every call of several messages
// with an error that is not transient and names no message, and publishes a
// single message after delay.
type slowSingles struct {
	delay time.Duration

	mu        sync.Mutex
	calls     []publishCall
	published []string
}

type publishCall struct {
	size        int
	ctxDeadline time.Time
}

func (p *slowSingles) Publish(ctx context.Context, msgs ...broker.Message) error {
	dl, _ := ctx.Deadline()
	p.mu.Lock()
	p.calls = append(p.calls, publishCall{size: len(msgs), ctxDeadline: dl})
	p.mu.Unlock()
	if len(msgs) > 1 {
		return errors.New("the whole call failed")
	}
	t := time.NewTimer(p.delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	p.mu.Lock()
	p.published = append(p.published, msgs[0].ID)
	p.mu.Unlock()
	return nil
}

func (p *slowSingles) snapshot() ([]publishCall, []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]publishCall(nil), p.calls...), append([]string(nil), p.published...)
}

func deadlineRecords(n int) []outbox.Record {
	recs := make([]outbox.Record, n)
	for i := range recs {
		m := broker.NewMessage("t", []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("k%d", i%3)
		recs[i] = outbox.Record{ID: int64(i + 1), Message: m, Status: outbox.StatusPending}
	}
	return recs
}

func warnings(rec *testenv.LogRecorder, substr string) int {
	n := 0
	for _, r := range rec.Records() {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, substr) {
			n++
		}
	}
	return n
}

// When a batch fails as a whole and is published one row at a time, the
// relay stops before a call could run past the claim's deadline (less its
// margin, a tenth of the claim's lifetime): it completes the claim in time
// with the rows published so far, leaves the rest unchanged (no attempt
// charged) and logs a warning. No Publish call's context, the batch call's
// included, outlives the deadline minus the margin. A claim without a
// deadline is isolated to the end, as ever.
func TestIsolateStopsAtClaimDeadline(t *testing.T) {
	t.Parallel()
	const (
		rows           = 20
		delay          = 50 * time.Millisecond // per single message: rows*delay > life
		life           = time.Second           // the claim's deadline, after the claim
		margin         = life / 10             // the least margin the relay keeps
		publishTimeout = 200 * time.Millisecond
	)
	run := func(t *testing.T, life, publishTimeout time.Duration) (*deadlineStore, *slowSingles, *testenv.LogRecorder) {
		t.Helper()
		store := &deadlineStore{recs: deadlineRecords(rows), life: life}
		pub := &slowSingles{delay: delay}
		logs := &testenv.LogRecorder{}
		r, err := outbox.NewRelay(store, pub, outbox.Config{PublishTimeout: publishTimeout, Logger: slog.New(logs)})
		if err != nil {
			t.Fatal(err)
		}
		n, err := r.RunOnce(context.Background())
		if err != nil || n != rows {
			t.Fatalf("RunOnce = %d, %v; want %d rows claimed, no error", n, err, rows)
		}
		return store, pub, logs
	}
	checkCalls := func(t *testing.T, c *fakeClaim, calls []publishCall) {
		t.Helper()
		for i, call := range calls {
			if call.ctxDeadline.IsZero() || call.ctxDeadline.After(c.deadline.Add(-margin)) {
				t.Errorf("publish call %d (%d messages): context deadline %v, want no later than %v before the claim's deadline",
					i, call.size, c.deadline.Sub(call.ctxDeadline), margin)
			}
		}
	}

	t.Run("Deadline", func(t *testing.T) {
		t.Parallel()
		store, pub, logs := run(t, life, publishTimeout)
		c := store.last()
		calls, published := pub.snapshot()
		if c.ended != "complete" || c.endCalls != 1 || c.endedAt.After(c.deadline) {
			t.Fatalf("claim ended by %q (%d calls) %v before its deadline; want one Complete before it",
				c.ended, c.endCalls, c.deadline.Sub(c.endedAt))
		}
		if len(c.outcome.Failed) != 0 {
			t.Errorf("rows charged: %+v; the rows left for later must be released unchanged", c.outcome.Failed)
		}
		if n := len(c.outcome.Published); n == 0 || n >= rows {
			t.Fatalf("%d of %d rows published; want some, and the rest left for a later claim", n, rows)
		}
		for i, id := range c.outcome.Published {
			if id != store.recs[i].ID || published[i] != store.recs[i].Message.ID {
				t.Fatalf("published ids %v (messages %v), want the first rows in order", c.outcome.Published, published)
			}
		}
		if len(published) != len(c.outcome.Published) {
			t.Errorf("the broker got %d messages, the claim completed %d", len(published), len(c.outcome.Published))
		}
		if calls[0].size != rows {
			t.Errorf("first call carried %d messages, want the whole batch of %d", calls[0].size, rows)
		}
		checkCalls(t, c, calls)
		if n := warnings(logs, "claim deadline near"); n != 1 {
			t.Errorf("%d warnings about the claim deadline, want 1", n)
		}
		t.Logf("%d of %d rows published; claim completed %v before its deadline",
			len(c.outcome.Published), rows, c.deadline.Sub(c.endedAt).Round(time.Millisecond))
	})

	// PublishTimeout leaves no room for a single row: nothing is tried one
	// at a time, the claim is released unchanged, and a warning says why.
	t.Run("NoRoom", func(t *testing.T) {
		t.Parallel()
		store, pub, logs := run(t, life, 2*life)
		c := store.last()
		calls, published := pub.snapshot()
		if c.ended != "release" || c.endedAt.After(c.deadline) {
			t.Fatalf("claim ended by %q %v before its deadline; want a Release before it", c.ended, c.deadline.Sub(c.endedAt))
		}
		if len(calls) != 1 || len(published) != 0 {
			t.Errorf("%d publish calls, %d messages published; want only the batch call", len(calls), len(published))
		}
		checkCalls(t, c, calls)
		if n := warnings(logs, "no time to publish one row"); n != 1 {
			t.Errorf("%d warnings about PublishTimeout not fitting, want 1", n)
		}
	})

	// A running relay whose claims leave no room does not claim them again
	// at once, over and over: it waits for its next poll.
	t.Run("NoRoomRun", func(t *testing.T) {
		t.Parallel()
		const poll, runFor = 200 * time.Millisecond, time.Second
		store := &deadlineStore{recs: deadlineRecords(rows), life: life}
		r, err := outbox.NewRelay(store, &slowSingles{delay: delay}, outbox.Config{
			PublishTimeout: 2 * life, PollInterval: poll, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), runFor)
		defer cancel()
		if err := r.Run(ctx); err != nil {
			t.Fatal(err)
		}
		store.mu.Lock()
		n := store.claims
		store.mu.Unlock()
		if n < 2 || n > int(runFor/poll)+2 {
			t.Errorf("%d claims in %v with a %v poll interval; want about one per poll", n, runFor, poll)
		}
	})

	// Without a deadline every row is tried, however long it takes.
	t.Run("NoDeadline", func(t *testing.T) {
		t.Parallel()
		store, pub, logs := run(t, 0, publishTimeout)
		c := store.last()
		calls, published := pub.snapshot()
		if c.ended != "complete" || len(c.outcome.Published) != rows || len(published) != rows {
			t.Fatalf("claim ended by %q with %d rows published (%d messages sent); want all %d",
				c.ended, len(c.outcome.Published), len(published), rows)
		}
		if len(calls) != rows+1 {
			t.Errorf("%d publish calls, want the batch and one per row", len(calls))
		}
		if n := warnings(logs, "claim"); n != 0 {
			t.Errorf("%d warnings about the claim; a claim without a deadline has none", n)
		}
	})
}
