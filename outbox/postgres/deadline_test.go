package postgres_test

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
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// A claim reports its deadline: ClaimTimeout after the claim began, no
// earlier than the Claim call and no later than its return plus
// ClaimTimeout. The claim is held until then (Complete shortly before it
// succeeds) and ended by the server some time after it (Complete fails). A
// claim without rows has no deadline.
func TestClaimDeadline(t *testing.T) {
	t.Parallel()
	const timeout = time.Second
	h := newHarness(t, postgres.Config{ClaimTimeout: timeout})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var claims []outbox.Claim
	defer func() {
		for _, c := range claims {
			_ = c.Release(context.Background())
		}
	}()
	claim := func() (outbox.Claim, time.Time) {
		t.Helper()
		before := time.Now()
		c, err := h.store.Claim(ctx, outbox.ClaimRequest{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		claims = append(claims, c)
		after := time.Now()
		d, ok := c.(outbox.ClaimDeadline)
		if !ok {
			t.Fatalf("%T does not implement outbox.ClaimDeadline", c)
		}
		deadline, ok := d.Deadline()
		if len(c.Records()) == 0 {
			if ok {
				t.Errorf("a claim without rows reports deadline %v", deadline)
			}
			return c, deadline
		}
		if !ok || deadline.Before(before.Add(timeout)) || deadline.After(after.Add(timeout)) {
			t.Fatalf("deadline %v after the Claim call began (%v, ok %v), want between %v and %v",
				deadline.Sub(before), deadline, ok, timeout, after.Sub(before)+timeout)
		}
		return c, deadline
	}
	if err := h.store.Enqueue(ctx, h.pool, outboxtest.SeqMessage("t", "a", 0), outboxtest.SeqMessage("t", "b", 0)); err != nil {
		t.Fatal(err)
	}
	held, heldUntil := claim()
	lost, lostAt := claim()
	if len(held.Records()) != 1 || len(lost.Records()) != 1 {
		t.Fatalf("claimed %d and %d rows, want 1 and 1", len(held.Records()), len(lost.Records()))
	}
	time.Sleep(time.Until(heldUntil.Add(-100 * time.Millisecond)))
	if err := held.Complete(ctx, outbox.Outcome{Published: ids(held.Records())}); err != nil {
		t.Errorf("Complete %v before the deadline: %v", time.Until(heldUntil), err)
	}
	time.Sleep(time.Until(lostAt.Add(time.Second)))
	if err := lost.Complete(ctx, outbox.Outcome{Published: ids(lost.Records())}); err == nil {
		t.Errorf("Complete a second after the deadline succeeded; the server should have ended the claim")
	}
	// The lost claim's row is claimable again; once it is published a claim
	// has no rows, and no deadline (checked by claim).
	again, _ := claim()
	if len(again.Records()) != 1 {
		t.Fatalf("after the lost claim, claimed %d rows, want its row", len(again.Records()))
	}
	if err := again.Complete(ctx, outbox.Outcome{Published: ids(again.Records())}); err != nil {
		t.Fatal(err)
	}
	if empty, _ := claim(); len(empty.Records()) != 0 {
		t.Errorf("claimed %d rows after every row was published", len(empty.Records()))
	}
}

// A relay publishing one row at a time after a batch failed as a whole
// stops before the claim's deadline, completes the claim with what it
// published and leaves the rest for a later claim. Two relays share an
// outbox with a short ClaimTimeout and a broker that refuses every call of
// several messages (an error that is neither transient nor names a message)
// and takes a sizeable part of the ClaimTimeout for each single message; the
// rows take longer than a ClaimTimeout to publish. No message is published
// twice (as it would be if a claim were lost and the rows claimed again
// while still being published), no Complete fails, and every row is
// published once.
func TestRelayStopsBeforeClaimTimeout(t *testing.T) {
	t.Parallel()
	const (
		claimTimeout   = 2 * time.Second
		delay          = 300 * time.Millisecond // per message
		publishTimeout = 2 * delay
		keys, perKey   = 2, 5 // keys*perKey*delay = 3s > claimTimeout
		rows           = keys * perKey
	)
	h := newHarness(t, postgres.Config{ClaimTimeout: claimTimeout})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := testenv.Name(t, "t")
	var msgs []broker.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, outboxtest.SeqMessage(topic, fmt.Sprint("k", k), i))
		}
	}
	if err := h.store.Enqueue(ctx, h.pool, msgs...); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		published = map[string]int{}
		order     = map[string][]string{} // key -> payloads in publish order
		dups      []string
	)
	pub := publisherFunc(func(ctx context.Context, msgs ...broker.Message) error {
		if len(msgs) > 1 {
			return errors.New("the whole call failed")
		}
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
		m := msgs[0]
		mu.Lock()
		defer mu.Unlock()
		if published[m.ID]++; published[m.ID] > 1 {
			dups = append(dups, string(m.Payload))
		}
		order[m.Key] = append(order[m.Key], string(m.Payload))
		return nil
	})
	fm := newFakeMeter()
	logs := &testenv.LogRecorder{}
	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		wg.Wait()
	}()
	for range 2 {
		r, err := outbox.NewRelay(h.open(t), pub, outbox.Config{
			PublishTimeout: publishTimeout,
			PollInterval:   50 * time.Millisecond,
			KeepPublished:  true, // the rows' states are checked below
			MeterProvider:  fakeProvider{m: fm},
			Logger:         slog.New(logs),
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = r.Run(runCtx) })
	}

	errorLogs := func() []string {
		var out []string
		for _, r := range logs.Records() {
			if r.Level >= slog.LevelError {
				var attrs []string
				r.Attrs(func(a slog.Attr) bool {
					attrs = append(attrs, a.String())
					return true
				})
				out = append(out, r.Message+" "+strings.Join(attrs, " "))
			}
		}
		return out
	}
	start := time.Now()
	outboxtest.Eventually(t, 30*time.Second, "every row published", func() (bool, string) {
		mu.Lock()
		n, d := len(published), len(dups)
		mu.Unlock()
		st, err := h.store.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d > 0 || fm.sum(outbox.MetricRepublished) > 0 || len(errorLogs()) > 0 {
			return true, "" // failed: reported below
		}
		return st.Pending == 0 && n == rows, fmt.Sprintf("%d of %d published; stats %+v", n, rows, st)
	})
	elapsed := time.Since(start)
	stop()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(dups) > 0 {
		t.Errorf("published more than once: %v", dups)
	}
	if n := fm.sum(outbox.MetricRepublished); n > 0 {
		t.Errorf("%v rows accepted by the broker were not recorded (a Complete failed): they will be published again", n)
	}
	for _, l := range errorLogs() {
		t.Errorf("relay logged an error: %s", l)
	}
	if t.Failed() {
		return
	}
	for k := range keys {
		key := fmt.Sprint("k", k)
		var want []string
		for i := range perKey {
			want = append(want, fmt.Sprintf("%s/%d", key, i))
		}
		if got := order[key]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("key %s published as %v, want %v", key, got, want)
		}
	}
	if got, err := rowStates(ctx, h); err != nil {
		t.Fatal(err)
	} else if strings.Contains(got, ":pending:") || strings.Contains(got, ":dead:") || !strings.Contains(got, ":published:0:") {
		t.Errorf("rows: %s; want every row published with no attempt charged", got)
	} else if strings.Count(got, ":published:0:") != rows {
		t.Errorf("rows: %s; want %d published with no attempt charged", got, rows)
	}
	cut := 0
	for _, r := range logs.Records() {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, "claim deadline near") {
			cut++
		}
	}
	if cut == 0 {
		t.Errorf("no relay stopped for a claim's deadline, yet the rows take %v to publish one by one (ClaimTimeout %v)",
			rows*delay, claimTimeout)
	}
	t.Logf("%d rows published in %v; %d claims cut short at their deadline", rows, elapsed.Round(time.Millisecond), cut)
}
