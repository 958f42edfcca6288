package saga

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// fakeTx runs savepoints and nothing else: the transitions below only
// decide.
type fakeTx struct{ StoreTx }

func (fakeTx) AfterCommit(func()) {}
func (fakeTx) Savepoint(ctx context.Context, fn func(context.Context, Tx) error) error {
	return fn(ctx, fakeTx{})
}

type nopStore struct{ Store }

type od struct{ ID string }

func testDef(t *testing.T, steps ...Step[od]) *definition {
	t.Helper()
	def, err := Define("t", 1, steps...)
	if err != nil {
		t.Fatal(err)
	}
	return def.d
}

func send(topic string) func(context.Context, *od) (broker.Message, error) {
	return func(context.Context, *od) (broker.Message, error) { return broker.Message{Topic: topic}, nil }
}

// order: reserve (compensated), charge (pivot), ship (retriable).
func orderDef(t *testing.T) *definition {
	return testDef(t,
		Step[od]{Name: "reserve", Command: send("inv"), CompensationCommand: send("inv"), Retry: Retry{MaxAttempts: 2}},
		Step[od]{Name: "charge", Kind: Pivot, Command: send("pay"), Retry: Retry{MaxAttempts: 2},
			OnReply: func(_ context.Context, _ *od, r Reply) error {
				if string(r.Message.Payload) == "garbage" {
					return errors.New("cannot read the payment ID")
				}
				return nil
			}},
		Step[od]{Name: "ship", Kind: Retriable, Command: send("ship")})
}

func newTestEngine(t *testing.T, cfg Config) *Engine {
	t.Helper()
	e, err := NewEngine(nopStore{}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func running(step int, name string) Instance {
	now := time.Now()
	return Instance{ID: "i", Type: "t", Version: 1, Status: StatusRunning, Step: step, StepName: name, Attempt: 1,
		Awaiting: "cmd-1", AwaitingSince: now, Timer: TimerTimeout, TimerAt: now.Add(time.Minute), Data: []byte(`{}`),
		CreatedAt: now.Add(-time.Minute)}
}

func kinds(evs []Event) []EventKind {
	out := make([]EventKind, len(evs))
	for i, ev := range evs {
		out[i] = ev.Kind
	}
	return out
}

func reply(step, cmd string, comp bool, o Outcome, payload string) Reply {
	return Reply{SagaID: "i", Step: step, CommandID: cmd, Compensate: comp, Outcome: o,
		Message: broker.Message{ID: broker.NewID(), Payload: []byte(payload)}}
}

func TestDeadlinePastPivot(t *testing.T) {
	e := newTestEngine(t, Config{})
	in := running(2, "ship")
	in.PastPivot = true
	in.Deadline = time.Now().Add(-time.Second)
	tr := e.newTransition(context.Background(), fakeTx{}, orderDef(t), in, "")
	if err := tr.timer(); err != nil {
		t.Fatal(err)
	}
	c := tr.change()
	if got := kinds(c.Events); !slices.Equal(got, []EventKind{EventDeadline}) || c.Instance.Status != StatusRunning ||
		!c.Instance.Deadline.IsZero() || !c.Instance.WakeAt.Equal(in.TimerAt) {
		t.Errorf("events %v, status %s, deadline %v, wake %v", got, c.Instance.Status, c.Instance.Deadline, c.Instance.WakeAt)
	}
}

func TestDeadlineWaitsForPivot(t *testing.T) {
	e := newTestEngine(t, Config{})
	in := running(1, "charge")
	in.Deadline = time.Now().Add(-time.Second)
	def := orderDef(t)
	tr := e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.timer(); err != nil {
		t.Fatal(err)
	}
	c := tr.change()
	if len(c.Events) != 0 || !c.Instance.WakeAt.Equal(in.TimerAt) {
		t.Fatalf("the deadline acted while the pivot was in flight: %v, wake %v", kinds(c.Events), c.Instance.WakeAt)
	}
	// The pivot is refused: the saga compensates (for its failure, not
	// the deadline).
	tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.reply(reply("charge", "cmd-1", false, OutcomeFailure, "")); err != nil {
		t.Fatal(err)
	}
	if c := tr.change(); c.Instance.Status != StatusCompensating || c.Instance.StepName != "reserve" || len(c.Messages) != 1 {
		t.Errorf("after the refused pivot: %s at %s, %d messages", c.Instance.Status, c.Instance.StepName, len(c.Messages))
	}
}

func TestCancelDeferredWhilePivotInFlight(t *testing.T) {
	e := newTestEngine(t, Config{})
	in := running(1, "charge")
	in.Request = RequestCancel
	def := orderDef(t)
	tr := e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.timer(); err != nil {
		t.Fatal(err)
	}
	c := tr.change()
	if len(c.Events) != 0 || c.Instance.Request != RequestCancel || !c.Instance.WakeAt.Equal(in.TimerAt) {
		t.Fatalf("deferred cancel: events %v, request %q, wake %v", kinds(c.Events), c.Instance.Request, c.Instance.WakeAt)
	}
	// The pivot's timeout after its last attempt: outcome unknown, parked
	// (never compensated blindly).
	in.Attempt = 2
	in.TimerAt = time.Now().Add(-time.Millisecond)
	tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.timer(); err != nil {
		t.Fatal(err)
	}
	c = tr.change()
	if c.Instance.Status != StatusParked || !strings.Contains(c.Instance.Failure, `outcome of pivot "charge" unknown`) {
		t.Errorf("pivot timeout: %s %q", c.Instance.Status, c.Instance.Failure)
	}
}

func TestOperatorRequests(t *testing.T) {
	def := orderDef(t)
	// Skip while parked in compensation: the compensation counts as done.
	e := newTestEngine(t, Config{ParkTopic: "alerts"})
	in := running(0, "reserve")
	in.Status, in.ParkedFrom, in.Awaiting, in.Timer, in.Request = StatusParked, StatusCompensating, "", TimerNone, RequestSkip
	tr := e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.advance(); err != nil {
		t.Fatal(err)
	}
	c := tr.change()
	if c.Instance.Status != StatusCompensated || !slices.Contains(kinds(c.Events), EventSkipped) {
		t.Errorf("skip in compensation: %s %v", c.Instance.Status, kinds(c.Events))
	}
	// Retry while parked in compensation: the compensation is sent again
	// with a fresh attempt count.
	in.Request, in.Attempt = RequestRetry, 10
	tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.advance(); err != nil {
		t.Fatal(err)
	}
	c = tr.change()
	if c.Instance.Status != StatusCompensating || c.Instance.Attempt != 1 || len(c.Messages) != 1 ||
		c.Messages[0].Headers[HeaderAction] != ActionCompensate || c.Messages[0].Headers[HeaderAttempt] != "1" {
		t.Errorf("retry in compensation: %s attempt %d, %d messages", c.Instance.Status, c.Instance.Attempt, len(c.Messages))
	}
	// Retry of a running instance: ignored, recorded.
	in = running(0, "reserve")
	in.Request = RequestRetry
	tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.advance(); err != nil {
		t.Fatal(err)
	}
	if c := tr.change(); !slices.Equal(kinds(c.Events), []EventKind{EventRequestIgnored}) || c.Instance.Request != "" {
		t.Errorf("retry of a running instance: %v", kinds(c.Events))
	}
	// A rejected reply parks, and announces it on ParkTopic.
	in = running(1, "charge")
	tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.reply(reply("charge", "cmd-1", false, OutcomeSuccess, "garbage")); err != nil {
		t.Fatal(err)
	}
	c = tr.change()
	if c.Instance.Status != StatusParked || len(c.Messages) != 1 || c.Messages[0].Topic != "alerts" ||
		c.Messages[0].Headers[broker.HeaderType] != "saga.parked" || !strings.Contains(string(c.Messages[0].Payload), "cannot read") {
		t.Errorf("rejected reply: %s, messages %+v", c.Instance.Status, c.Messages)
	}
	// A reply to the awaited command naming the wrong action is rejected.
	tr = e.newTransition(context.Background(), fakeTx{}, def, running(1, "charge"), "")
	if err := tr.reply(reply("charge", "cmd-1", true, OutcomeSuccess, "")); err != nil {
		t.Fatal(err)
	}
	if c := tr.change(); !slices.Equal(kinds(c.Events), []EventKind{EventReplyRejected}) || c.Instance.Awaiting != "cmd-1" {
		t.Errorf("wrong action: %v", kinds(c.Events))
	}
}

func TestBuildErrors(t *testing.T) {
	e := newTestEngine(t, Config{})
	calls := 0
	def := testDef(t,
		Step[od]{Name: "a", Command: send("a"), CompensationCommand: send("a")},
		Step[od]{Name: "b", Retry: Retry{MaxAttempts: 3, Backoff: broker.ConstantBackoff(time.Second)},
			Command: func(context.Context, *od) (broker.Message, error) {
				calls++
				if calls < 3 {
					return broker.Message{}, errors.New("config service down")
				}
				return broker.Message{}, nil // no topic: a bug, refused
			}})
	in := running(1, "b")
	in.Awaiting, in.Timer, in.Attempt = "", TimerNone, 0
	tr := e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.advance(); err != nil {
		t.Fatal(err)
	}
	c := tr.change()
	if c.Instance.Timer != TimerRetry || c.Instance.Attempt != 1 || !slices.Contains(kinds(c.Events), EventRetryScheduled) {
		t.Fatalf("transient build error: %v timer %q", kinds(c.Events), c.Instance.Timer)
	}
	in = c.Instance
	for range 2 {
		in.TimerAt = time.Now().Add(-time.Millisecond)
		tr = e.newTransition(context.Background(), fakeTx{}, def, in, "")
		if err := tr.timer(); err != nil {
			t.Fatal(err)
		}
		c = tr.change()
		in = c.Instance
	}
	if c.Instance.Status != StatusCompensating || !strings.Contains(c.Instance.Failure, "without a topic") {
		t.Errorf("after the builder's refusal: %s %q", c.Instance.Status, c.Instance.Failure)
	}
}

func TestLocalPanic(t *testing.T) {
	e := newTestEngine(t, Config{})
	def := testDef(t, Step[od]{Name: "a", Retry: Retry{MaxAttempts: 1},
		Action: func(context.Context, Tx, *od) error { panic("boom") }})
	in := running(0, "a")
	in.Awaiting, in.Timer, in.Attempt = "", TimerNone, 0
	tr := e.newTransition(context.Background(), fakeTx{}, def, in, "")
	if err := tr.advance(); err != nil {
		t.Fatal(err)
	}
	if c := tr.change(); c.Instance.Status != StatusCompensated || !strings.Contains(c.Instance.Failure, "panic: boom") {
		t.Errorf("panicking step: %s %q", c.Instance.Status, c.Instance.Failure)
	}
}

func TestEngineConfig(t *testing.T) {
	if _, err := NewEngine(nil, Config{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil store: %v", err)
	}
	for _, c := range []Config{{Concurrency: -1}, {PollInterval: -1}, {TimerConcurrency: -1}, {TransitionTimeout: -1}, {CleanupInterval: -1}} {
		if _, err := NewEngine(nopStore{}, c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	e := newTestEngine(t, Config{})
	def, _ := Define("t", 1, Step[od]{Name: "a", Command: send("a")})
	if err := e.Register(def); err != nil {
		t.Fatal(err)
	}
	if err := e.Register(def); !errors.Is(err, ErrInvalidDefinition) {
		t.Errorf("registered twice: %v", err)
	}
	if err := e.Register(nil); !errors.Is(err, ErrInvalidDefinition) {
		t.Errorf("nil definition: %v", err)
	}
	if _, err := e.definition("t", 2); !errors.Is(err, ErrUnregisteredVersion) {
		t.Errorf("unregistered version: %v", err)
	}
	if _, err := e.definition("u", 1); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	if _, err := Start(context.Background(), e, (*Definition[od])(nil), "x", od{}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("nil definition start: %v", err)
	}
}
