package sagatest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/saga"
)

// The history of an order that completed, and of one whose payment was
// refused, without reply-ignored events (redeliveries of at-least-once
// brokers may add those).
var (
	completedKinds = []saga.EventKind{saga.EventStarted,
		saga.EventCommandSent, saga.EventReply, saga.EventStepDone,
		saga.EventCommandSent, saga.EventReply, saga.EventStepDone,
		saga.EventCommandSent, saga.EventReply, saga.EventStepDone,
		saga.EventCompleted}
	refusedKinds = []saga.EventKind{saga.EventStarted,
		saga.EventCommandSent, saga.EventReply, saga.EventStepDone,
		saga.EventCommandSent, saga.EventReply, saga.EventStepFailed, saga.EventCompensating,
		saga.EventCommandSent, saga.EventReply, saga.EventStepCompensated,
		saga.EventCompensated}
)

// withoutIgnored drops reply-ignored events.
func withoutIgnored(ks []saga.EventKind) []saga.EventKind {
	return slices.DeleteFunc(slices.Clone(ks), func(k saga.EventKind) bool { return k == saga.EventReplyIgnored })
}

// CheckOrders asserts the outcome of orders started by StartOrders: the
// refused ones compensated (inventory reserved and released exactly once,
// never charged or shipped), the others completed (reserved, charged and
// shipped exactly once, never released, reply data kept), each with the
// exact history. It returns the counts.
func (h *Harness) CheckOrders(store saga.Store, got map[string]saga.Instance) (completed, compensated int) {
	h.T.Helper()
	ids := make([]string, 0, len(got))
	for id := range got {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	bad := 0
	for _, id := range ids {
		in := got[id]
		refused := Refused(id)
		want, wantKinds := saga.StatusCompleted, completedKinds
		effects := map[string]int{"reserve": 1, "release": 0, "charge": 1, "ship": 1}
		if refused {
			want, wantKinds = saga.StatusCompensated, refusedKinds
			effects = map[string]int{"reserve": 1, "release": 1, "charge": 0, "ship": 0}
		}
		var problems []string
		if in.Status != want {
			problems = append(problems, fmt.Sprintf("status %s, want %s", in.Status, want))
		}
		for name, n := range effects {
			if c := h.Effects.Count(name, id); c != n {
				problems = append(problems, fmt.Sprintf("effect %s applied %d times, want %d", name, c, n))
			}
		}
		if kinds := withoutIgnored(h.Kinds(store, id)); !slices.Equal(kinds, wantKinds) {
			problems = append(problems, fmt.Sprintf("history %v, want %v", kinds, wantKinds))
		}
		if !refused && !strings.Contains(string(in.Data), `"payment_id":"pay-`+id+`"`) {
			problems = append(problems, fmt.Sprintf("data %s lacks the payment ID of the reply", in.Data))
		}
		if len(problems) > 0 {
			bad++
			if bad <= 3 {
				h.T.Errorf("%s: %s%s", id, strings.Join(problems, "; "), h.Describe(store, id))
			}
		}
		if in.Status == saga.StatusCompleted {
			completed++
		} else if in.Status == saga.StatusCompensated {
			compensated++
		}
	}
	if bad > 3 {
		h.T.Errorf("... %d instances wrong in all", bad)
	}
	return completed, compensated
}

func wantRefused(ids []string) int {
	n := 0
	for _, id := range ids {
		if Refused(id) {
			n++
		}
	}
	return n
}

func caseOrderFlow(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	h.StartParticipants(nil)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	start := time.Now()
	ids := h.StartOrders(eng, def, "order", h.F.Orders)
	got := h.WaitFinished(h.Stores.Store, ids, false)
	t.Logf("%d orders finished in %v", len(ids), time.Since(start).Round(time.Millisecond))
	completed, compensated := h.CheckOrders(h.Stores.Store, got)
	if want := wantRefused(ids); compensated != want || completed != len(ids)-want {
		t.Errorf("completed %d, compensated %d; want %d and %d", completed, compensated, len(ids)-want, want)
	}
	for name, want := range map[string]int{"reserve": len(ids), "release": wantRefused(ids),
		"charge": len(ids) - wantRefused(ids), "ship": len(ids) - wantRefused(ids)} {
		if got := h.Effects.Total(name); got != want {
			t.Errorf("effect %s applied %d times in all, want %d", name, got, want)
		}
	}
}

func caseStartIdempotent(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	other := h.OrderDef(OrderOptions{Name: "other-saga"})
	unregistered := h.OrderDef(OrderOptions{Name: "never-registered"})
	h.StartParticipants(nil)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def, other}})
	ctx := h.Ctx()

	created, err := saga.Start(ctx, eng, def, "dup-1", Order{ID: "dup-1"})
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}
	created, err = saga.Start(ctx, eng, def, "dup-1", Order{ID: "dup-1", Amount: 999})
	if err != nil || created {
		t.Fatalf("second start: created %v, %v; want false, nil", created, err)
	}
	// Concurrent starts of one ID: one instance.
	var wg sync.WaitGroup
	var n atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := saga.Start(ctx, eng, def, "dup-2", Order{ID: "dup-2"})
			if err != nil {
				t.Errorf("concurrent start: %v", err)
			}
			if c {
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if n.Load() != 1 {
		t.Errorf("concurrent starts created %d instances, want 1", n.Load())
	}
	if _, err := saga.Start(ctx, eng, other, "dup-1", Order{ID: "dup-1"}); !errors.Is(err, saga.ErrIDConflict) {
		t.Errorf("start of an ID used by another type: %v, want ErrIDConflict", err)
	}
	if _, err := saga.Start(ctx, eng, unregistered, "x-1", Order{}); !errors.Is(err, saga.ErrUnknownType) {
		t.Errorf("start of an unregistered definition: %v, want ErrUnknownType", err)
	}
	for _, id := range []string{"", "bad\x00id", strings.Repeat("x", 201)} {
		if _, err := saga.Start(ctx, eng, def, id, Order{}); err == nil {
			t.Errorf("start with ID %q: no error", id)
		}
	}
	got := h.WaitFinished(h.Stores.Store, []string{"dup-1", "dup-2"}, false)
	for id, in := range got {
		if in.Status != saga.StatusCompleted || h.Effects.Count("reserve", id) != 1 || h.Effects.Count("ship", id) != 1 {
			t.Errorf("%s: %s, reserved %d times, shipped %d times; want completed once", id, in.Status,
				h.Effects.Count("reserve", id), h.Effects.Count("ship", id))
		}
	}
	if in := got["dup-1"]; !strings.Contains(string(in.Data), `"amount":0`) {
		t.Errorf("the second start changed the data: %s", in.Data)
	}
}

// redeliver publishes a held command again, as a late or reordered
// delivery.
func (h *Harness) redeliver(d broker.Delivery) {
	h.T.Helper()
	if err := h.Broker.Publisher.Publish(h.Ctx(), d.Message); err != nil {
		h.T.Fatalf("redeliver %s: %v", d.ID, err)
	}
}

// unhold stops holding key's commands.
func (f *Faults) unhold(key string) {
	f.Lock()
	delete(f.Hold, key)
	f.Unlock()
}

// countKind counts events of kind in an instance's history.
func (h *Harness) countKind(store saga.Store, id string, kind saga.EventKind) int {
	n := 0
	for _, k := range h.Kinds(store, id) {
		if k == kind {
			n++
		}
	}
	return n
}

func caseTimeout(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{StepTimeout: 300 * time.Millisecond, Retry: saga.Retry{MaxAttempts: 2}})
	held := make(chan broker.Delivery, 4)
	faults := &Faults{Hold: map[string]chan broker.Delivery{"slow-1/inventory": held}}
	h.StartParticipants(faults)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	if _, err := saga.Start(h.Ctx(), eng, def, "slow-1", Order{ID: "slow-1"}); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(store, "slow-1", saga.StatusCompensated)
	want := []saga.EventKind{saga.EventStarted,
		saga.EventCommandSent, saga.EventTimeout, saga.EventCommandSent, saga.EventTimeout,
		saga.EventStepFailed, saga.EventCompensating,
		saga.EventCommandSent, saga.EventReply, saga.EventStepCompensated, saga.EventCompensated}
	if got := withoutIgnored(h.Kinds(store, "slow-1")); !slices.Equal(got, want) {
		t.Errorf("history %v, want %v%s", got, want, h.Describe(store, "slow-1"))
	}
	// The participant never acted, so the compensation was a null one.
	if r, c := h.Effects.Count("reserve", "slow-1"), h.Effects.Count("release", "slow-1"); r != 0 || c != 0 {
		t.Errorf("reserved %d, released %d; want 0 and 0", r, c)
	}

	// The first command arrives late: the participant must not act, and
	// its (failure) reply is recorded and ignored.
	faults.unhold("slow-1/inventory")
	first := <-held
	h.redeliver(first)
	h.Eventually("the late command's reply is recorded", func() bool {
		return h.countKind(store, "slow-1", saga.EventReplyIgnored) >= 1
	})
	// A late success reply to the first command: recorded, ignored.
	cmd, err := saga.ParseCommand(first.Message)
	if err != nil {
		t.Fatal(err)
	}
	late := saga.NewReply(h.Ctx(), cmd, saga.OutcomeSuccess, nil, "")
	if err := h.Broker.Publisher.Publish(h.Ctx(), late); err != nil {
		t.Fatal(err)
	}
	h.Eventually("the late success reply is recorded", func() bool {
		return h.countKind(store, "slow-1", saga.EventReplyIgnored) >= 2
	})
	in, err := store.Get(h.Ctx(), "slow-1")
	if err != nil || in.Status != saga.StatusCompensated {
		t.Errorf("after late replies: %v, %v; want compensated", in.Status, err)
	}
	if r := h.Effects.Count("reserve", "slow-1"); r != 0 {
		t.Errorf("the late command was performed (%d) after its compensation", r)
	}
	evs, _ := store.History(h.Ctx(), "slow-1", 0, 0)
	for _, ev := range evs {
		if ev.Kind == saga.EventReplyIgnored && !strings.Contains(ev.Detail, "compensated") {
			t.Errorf("ignored reply detail %q does not say why", ev.Detail)
		}
	}
}

func caseCompensationParks(t *testing.T, h *Harness) {
	meter := NewMeter()
	def := h.OrderDef(OrderOptions{CompRetry: saga.Retry{MaxAttempts: 3, Backoff: broker.ConstantBackoff(20 * time.Millisecond)}})
	faults := &Faults{FailRelease: true}
	h.StartParticipants(faults)
	parks := make(chan broker.Delivery, 8)
	h.Subscribe(h.Topic("parked"), "alerts", func(_ context.Context, d broker.Delivery) error {
		parks <- d
		return nil
	})
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}, ParkTopic: h.Topic("parked"), Meter: meter})
	store := h.Stores.Store
	ids := h.StartOrders(eng, def, "park", 8)
	got := h.WaitFinished(store, ids, true)
	in := got["park-7"]
	if in.Status != saga.StatusParked || in.ParkedFrom != saga.StatusCompensating ||
		!strings.Contains(in.Failure, `compensation of step "reserve-inventory" failed 3 attempts`) {
		t.Fatalf("park-7: %s from %s (%q); want parked from compensating after 3 attempts%s", in.Status, in.ParkedFrom,
			in.Failure, h.Describe(store, "park-7"))
	}
	want := []saga.EventKind{saga.EventStarted,
		saga.EventCommandSent, saga.EventReply, saga.EventStepDone,
		saga.EventCommandSent, saga.EventReply, saga.EventStepFailed, saga.EventCompensating,
		saga.EventCommandSent, saga.EventReply, saga.EventCompensationFailed, saga.EventRetryScheduled,
		saga.EventCommandSent, saga.EventReply, saga.EventCompensationFailed, saga.EventRetryScheduled,
		saga.EventCommandSent, saga.EventReply, saga.EventCompensationFailed, saga.EventParked}
	if k := withoutIgnored(h.Kinds(store, "park-7")); !slices.Equal(k, want) {
		t.Errorf("history %v, want %v", k, want)
	}
	select {
	case d := <-parks:
		if d.Headers[broker.HeaderType] != "saga.parked" || !strings.Contains(string(d.Payload), `"id":"park-7"`) {
			t.Errorf("park event %v %s", d.Headers, d.Payload)
		}
	case <-time.After(h.F.Timeout):
		t.Errorf("no park event")
	}
	h.Eventually("the parked metric", func() bool { return meter.Count(saga.MetricParked) == 1 })

	// Operator errors.
	if err := eng.Retry(h.Ctx(), "park-0", ""); !errors.Is(err, saga.ErrFinished) {
		t.Errorf("retry of a completed instance: %v, want ErrFinished", err)
	}
	if err := eng.Skip(h.Ctx(), "no-such-order", ""); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("skip of a missing instance: %v, want ErrNotFound", err)
	}
	// The fault is fixed; an operator retries.
	faults.Lock()
	faults.FailRelease = false
	faults.Unlock()
	if err := eng.Retry(h.Ctx(), "park-7", "warehouse back"); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(store, "park-7", saga.StatusCompensated)
	if r, c := h.Effects.Count("reserve", "park-7"), h.Effects.Count("release", "park-7"); r != 1 || c != 1 {
		t.Errorf("reserved %d, released %d; want 1 and 1", r, c)
	}
	k := h.Kinds(store, "park-7")
	if !slices.Contains(k, saga.EventRequested) || !slices.Contains(k, saga.EventResumed) || k[len(k)-1] != saga.EventCompensated {
		t.Errorf("history after retry: %v", k)
	}
	h.Eventually("the compensated metric", func() bool { return meter.Count(saga.MetricCompensated) == 1 })
	h.Eventually("the completed metric", func() bool { return meter.Count(saga.MetricCompleted) == 7 })
	if meter.Count(saga.MetricStarted) != 8 {
		t.Errorf("started metric %d, want 8", meter.Count(saga.MetricStarted))
	}
}

func caseRetriableSkip(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{Retry: saga.Retry{MaxAttempts: 3, Backoff: broker.ConstantBackoff(20 * time.Millisecond)}})
	held := make(chan broker.Delivery, 4)
	faults := &Faults{FailShip: true, Hold: map[string]chan broker.Delivery{"skip-2/shipping": held}}
	h.StartParticipants(faults)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	ctx := h.Ctx()
	for _, id := range []string{"skip-0", "skip-1", "skip-2"} {
		if _, err := saga.Start(ctx, eng, def, id, Order{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"skip-0", "skip-1"} {
		in := h.WaitStatus(store, id, saga.StatusParked)
		if in.ParkedFrom != saga.StatusRunning || !in.PastPivot || in.StepName != "ship" {
			t.Errorf("%s parked from %s at %q, past pivot %v; want running, ship, true", id, in.ParkedFrom, in.StepName, in.PastPivot)
		}
		if n := h.countKind(store, id, saga.EventRetryScheduled); n != 2 {
			t.Errorf("%s: %d retries scheduled, want 2", id, n)
		}
	}
	// Past the pivot, cancelling a running instance is refused.
	h.Eventually("skip-2 waits for shipping", func() bool {
		in, err := store.Get(ctx, "skip-2")
		return err == nil && in.StepName == "ship" && in.Awaiting != ""
	})
	if err := eng.Cancel(ctx, "skip-2", ""); !errors.Is(err, saga.ErrPastPivot) {
		t.Errorf("cancel past the pivot: %v, want ErrPastPivot", err)
	}
	// An operator shipped skip-0 by hand and skips the step.
	if err := eng.Skip(ctx, "skip-0", "shipped by hand"); err != nil {
		t.Fatal(err)
	}
	in := h.WaitStatus(store, "skip-0", saga.StatusCompleted)
	if h.Effects.Count("ship", "skip-0") != 0 || h.Effects.Count("release", "skip-0") != 0 || strings.Contains(string(in.Data), "track-") {
		t.Errorf("skip-0 shipped or released: %s", h.Describe(store, "skip-0"))
	}
	// skip-1 is given up: cancelling a parked instance aborts it, with no
	// compensation (it is past its pivot).
	if err := eng.Cancel(ctx, "skip-1", "refund by hand"); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(store, "skip-1", saga.StatusAborted)
	if h.Effects.Count("release", "skip-1") != 0 || h.Effects.Count("charge", "skip-1") != 1 {
		t.Errorf("skip-1 after abort: released %d, charged %d", h.Effects.Count("release", "skip-1"), h.Effects.Count("charge", "skip-1"))
	}
	if err := eng.Retry(ctx, "skip-1", ""); !errors.Is(err, saga.ErrFinished) {
		t.Errorf("retry of an aborted instance: %v, want ErrFinished", err)
	}
	// skip-2's command arrives late; shipping still fails; it parks.
	faults.unhold("skip-2/shipping")
	h.redeliver(<-held)
	h.WaitStatus(store, "skip-2", saga.StatusParked)
}

func caseCancel(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	holds := map[string]chan broker.Delivery{}
	for _, k := range []string{"c-1/payment", "c-2/payment", "c-3/inventory"} {
		holds[k] = make(chan broker.Delivery, 4)
	}
	faults := &Faults{Hold: maps(holds)}
	h.StartParticipants(faults)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	ctx := h.Ctx()
	for _, o := range []Order{{ID: "c-1"}, {ID: "c-2", Refuse: true}, {ID: "c-3"}} {
		if _, err := saga.Start(ctx, eng, def, o.ID, o); err != nil {
			t.Fatal(err)
		}
	}
	awaiting := func(id, step string) {
		h.Eventually(id+" awaits "+step, func() bool {
			in, err := store.Get(ctx, id)
			return err == nil && in.StepName == step && in.Awaiting != ""
		})
	}
	// c-3 waits for inventory: cancelling compensates at once, including
	// the step in flight (its outcome is unknown), as a null compensation.
	awaiting("c-3", "reserve-inventory")
	if err := eng.Cancel(ctx, "c-3", "customer changed their mind"); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(store, "c-3", saga.StatusCompensated)
	want := []saga.EventKind{saga.EventStarted, saga.EventCommandSent, saga.EventRequested, saga.EventCancelled,
		saga.EventCompensating, saga.EventCommandSent, saga.EventReply, saga.EventStepCompensated, saga.EventCompensated}
	if k := withoutIgnored(h.Kinds(store, "c-3")); !slices.Equal(k, want) {
		t.Errorf("c-3 history %v, want %v", k, want)
	}
	faults.unhold("c-3/inventory")
	h.redeliver(<-holds["c-3/inventory"])
	h.Eventually("c-3's late reply is recorded", func() bool { return h.countKind(store, "c-3", saga.EventReplyIgnored) == 1 })
	if h.Effects.Count("reserve", "c-3") != 0 {
		t.Errorf("c-3: the command was performed after the cancellation")
	}

	// c-1 and c-2 wait for the pivot: the cancel waits for its outcome.
	awaiting("c-1", "charge-payment")
	awaiting("c-2", "charge-payment")
	for _, id := range []string{"c-1", "c-2"} {
		if err := eng.Cancel(ctx, id, ""); err != nil {
			t.Fatal(err)
		}
		in, _ := store.Get(ctx, id)
		if in.Request != saga.RequestCancel || in.Status != saga.StatusRunning {
			t.Errorf("%s: request %q status %s; want a pending cancel", id, in.Request, in.Status)
		}
	}
	time.Sleep(100 * time.Millisecond) // engines poll every 50ms: the deferred request must still be pending
	for _, id := range []string{"c-1", "c-2"} {
		if in, _ := store.Get(ctx, id); in.Status != saga.StatusRunning || in.Request != saga.RequestCancel {
			t.Errorf("%s acted on the cancel while its pivot was in flight: %s", id, h.Describe(store, id))
		}
	}
	for _, id := range []string{"c-1", "c-2"} {
		faults.unhold(id + "/payment")
		h.redeliver(<-holds[id+"/payment"])
	}
	// The pivot succeeded for c-1: it completes; it was refused for c-2:
	// it compensates.
	h.WaitStatus(store, "c-1", saga.StatusCompleted)
	if !slices.Contains(h.Kinds(store, "c-1"), saga.EventRequestIgnored) {
		t.Errorf("c-1 does not record the ignored cancel")
	}
	h.WaitStatus(store, "c-2", saga.StatusCompensated)
	if h.Effects.Count("release", "c-2") != 1 || h.Effects.Count("ship", "c-1") != 1 {
		t.Errorf("c-2 released %d times, c-1 shipped %d times; want 1 and 1",
			h.Effects.Count("release", "c-2"), h.Effects.Count("ship", "c-1"))
	}
	if err := eng.Cancel(ctx, "c-3", ""); !errors.Is(err, saga.ErrFinished) {
		t.Errorf("cancel of a finished instance: %v, want ErrFinished", err)
	}
	if err := eng.Cancel(ctx, "c-404", ""); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("cancel of a missing instance: %v, want ErrNotFound", err)
	}
}

func maps(m map[string]chan broker.Delivery) map[string]chan broker.Delivery {
	out := make(map[string]chan broker.Delivery, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func caseDeadline(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{Deadline: 500 * time.Millisecond})
	held := make(chan broker.Delivery, 4)
	faults := &Faults{Hold: map[string]chan broker.Delivery{"dl-1/inventory": held}}
	h.StartParticipants(faults)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	if _, err := saga.Start(h.Ctx(), eng, def, "dl-1", Order{ID: "dl-1"}); err != nil {
		t.Fatal(err)
	}
	in := h.WaitStatus(h.Stores.Store, "dl-1", saga.StatusCompensated)
	if in.Deadline.IsZero() || in.EndedAt.Before(in.CreatedAt.Add(500*time.Millisecond)) {
		t.Errorf("deadline %v, ended %v after start", in.Deadline, in.EndedAt.Sub(in.CreatedAt))
	}
	evs, _ := h.Stores.Store.History(h.Ctx(), "dl-1", 0, 0)
	found := false
	for _, ev := range evs {
		found = found || ev.Kind == saga.EventCancelled && ev.Detail == "deadline exceeded"
	}
	if !found {
		t.Errorf("no cancellation by the deadline:%s", h.Describe(h.Stores.Store, "dl-1"))
	}
}

func caseLocalSteps(t *testing.T, h *Harness) {
	var tries sync.Map // order ID -> *atomic.Int32
	attempt := func(id string) int32 {
		v, _ := tries.LoadOrStore(id, new(atomic.Int32))
		return v.(*atomic.Int32).Add(1)
	}
	cmd := func(_ context.Context, o *Order) (broker.Message, error) {
		return broker.Message{Topic: h.Topic("payment"), Payload: fmt.Appendf(nil, `{"id":%q,"refuse":%v}`, o.ID, o.Refuse)}, nil
	}
	def, err := saga.Define("local-order", 1,
		saga.Step[Order]{Name: "validate", Action: func(_ context.Context, _ saga.Tx, o *Order) error {
			if o.Amount < 0 {
				return saga.Refusef("negative amount")
			}
			o.Tracking = "validated"
			return nil
		}},
		saga.Step[Order]{Name: "hold-stock",
			Action: func(_ context.Context, tx saga.Tx, o *Order) error {
				id := o.ID
				tx.AfterCommit(func() { h.Effects.Add("hold", id) })
				if o.Amount == 13 {
					return errors.New("stock service flaky") // transient, every time
				}
				return nil
			},
			Compensation: func(_ context.Context, tx saga.Tx, o *Order) error {
				id := o.ID
				tx.AfterCommit(func() { h.Effects.Add("unhold", id) })
				return nil
			},
			Retry: saga.Retry{MaxAttempts: 2, Backoff: broker.ConstantBackoff(10 * time.Millisecond)}},
		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: cmd},
		saga.Step[Order]{Name: "notify", Kind: saga.Retriable,
			Retry: saga.Retry{MaxAttempts: 5, Backoff: broker.ConstantBackoff(10 * time.Millisecond)},
			Action: func(_ context.Context, tx saga.Tx, o *Order) error {
				id := o.ID
				switch attempt(id) {
				case 1:
					o.PaymentID = "garbage"
					tx.AfterCommit(func() { h.Effects.Add("notify-leak", id) })
					return errors.New("smtp down")
				case 2:
					panic("notifier bug")
				}
				tx.AfterCommit(func() { h.Effects.Add("notify", id) })
				return nil
			}},
	)
	if err != nil {
		t.Fatal(err)
	}
	h.StartParticipants(nil)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	orders := []Order{{ID: "loc-ok", Amount: 1}, {ID: "loc-refused", Amount: 1, Refuse: true},
		{ID: "loc-invalid", Amount: -1}, {ID: "loc-flaky", Amount: 13}}
	var ids []string
	for _, o := range orders {
		ids = append(ids, o.ID)
		if _, err := saga.Start(h.Ctx(), eng, def, o.ID, o); err != nil {
			t.Fatal(err)
		}
	}
	got := h.WaitFinished(store, ids, false)
	check := func(id string, st saga.Status, effects map[string]int) {
		t.Helper()
		if got[id].Status != st {
			t.Errorf("%s: %s, want %s%s", id, got[id].Status, st, h.Describe(store, id))
		}
		for name, n := range effects {
			if c := h.Effects.Count(name, id); c != n {
				t.Errorf("%s: effect %s applied %d times, want %d", id, name, c, n)
			}
		}
	}
	check("loc-ok", saga.StatusCompleted, map[string]int{"hold": 1, "unhold": 0, "notify": 1, "notify-leak": 0})
	if d := string(got["loc-ok"].Data); !strings.Contains(d, `"tracking":"validated"`) || strings.Contains(d, "garbage") {
		t.Errorf("loc-ok data %s: want the validation kept and the failed attempt's change discarded", d)
	}
	if n := h.countKind(store, "loc-ok", saga.EventRetryScheduled); n != 2 {
		t.Errorf("loc-ok: %d retries, want 2 (an error, then a panic)", n)
	}
	// Refused payment: the local compensation runs.
	check("loc-refused", saga.StatusCompensated, map[string]int{"hold": 1, "unhold": 1, "notify": 0})
	// A refused first step: nothing to compensate.
	check("loc-invalid", saga.StatusCompensated, map[string]int{"hold": 0, "unhold": 0})
	// A transient failure past its attempts fails the step; the failed
	// attempts wrote nothing (AfterCommit never ran), so nothing to undo.
	check("loc-flaky", saga.StatusCompensated, map[string]int{"hold": 0, "unhold": 0})
	evs, _ := store.History(h.Ctx(), "loc-flaky", 0, 0)
	found := false
	for _, ev := range evs {
		found = found || ev.Kind == saga.EventStepFailed && strings.Contains(ev.Detail, "failed 2 attempts: stock service flaky")
	}
	if !found {
		t.Errorf("loc-flaky: no step failure after 2 attempts:%s", h.Describe(store, "loc-flaky"))
	}
}

func caseDuplicateReplies(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	h.StartParticipants(nil)
	// Every message the outboxes publish (commands and replies) is
	// published twice, with the same ID: as a relay that crashed before
	// marking them would.
	h.pub.setHook(func(ctx context.Context, msgs []broker.Message) error {
		return h.Broker.Publisher.Publish(ctx, msgs...)
	})
	meter := NewMeter()
	// And every reply is handled twice by the engine.
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}, Meter: meter,
		Wrap: func(next broker.Handler) broker.Handler {
			return func(ctx context.Context, d broker.Delivery) error {
				if err := next(ctx, d); err != nil {
					return err
				}
				return next(ctx, d)
			}
		}})
	ids := h.StartOrders(eng, def, "dup", 30)
	got := h.WaitFinished(h.Stores.Store, ids, false)
	completed, compensated := h.CheckOrders(h.Stores.Store, got)
	if compensated != wantRefused(ids) || completed != len(ids)-wantRefused(ids) {
		t.Errorf("completed %d, compensated %d", completed, compensated)
	}
	if meter.Count(saga.MetricDuplicates) < int64(len(ids)) {
		t.Errorf("duplicate replies recognised: %d, want at least %d", meter.Count(saga.MetricDuplicates), len(ids))
	}
}

func caseTwoEngines(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	slow := h.OrderDef(OrderOptions{Name: "order-timeout", StepTimeout: 300 * time.Millisecond, Retry: saga.Retry{MaxAttempts: 2}})
	held := make(chan broker.Delivery, 8)
	var mu sync.Mutex
	commands := map[string]map[string]bool{} // saga/step/action -> command IDs
	faults := &Faults{Hold: map[string]chan broker.Delivery{"tw-slow/inventory": held}}
	h.StartParticipantsObserved(faults, func(d broker.Delivery) {
		k := d.Headers[saga.HeaderSagaID] + "/" + d.Headers[saga.HeaderStep] + "/" + d.Headers[saga.HeaderAction]
		mu.Lock()
		if commands[k] == nil {
			commands[k] = map[string]bool{}
		}
		commands[k][d.ID] = true
		mu.Unlock()
	})
	storeB := h.Stores.Store
	if h.Stores.Reopen != nil {
		storeB = h.Stores.Reopen(t)
	}
	// Two engines in two consumer groups: each receives every reply, and
	// both fire timers, so they race on every transition.
	defs := []saga.AnyDefinition{def, slow}
	engA, _ := h.StartEngine(EngineOptions{Defs: defs, Group: "engine-a"})
	engB, _ := h.StartEngine(EngineOptions{Store: storeB, Defs: defs, Group: "engine-b"})
	n := h.F.Orders / 2
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("tw-%d", i)
		eng := engA
		if i%2 == 1 {
			eng = engB
		}
		if _, err := saga.Start(h.Ctx(), eng, def, ids[i], Order{ID: ids[i], Refuse: i%10 == 7}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := saga.Start(h.Ctx(), engB, slow, "tw-slow", Order{ID: "tw-slow"}); err != nil {
		t.Fatal(err)
	}
	got := h.WaitFinished(h.Stores.Store, ids, false)
	completed, compensated := h.CheckOrders(h.Stores.Store, got)
	if compensated != wantRefused(ids) || completed != n-wantRefused(ids) {
		t.Errorf("completed %d, compensated %d", completed, compensated)
	}
	h.WaitStatus(h.Stores.Store, "tw-slow", saga.StatusCompensated)
	if k := h.Kinds(h.Stores.Store, "tw-slow"); h.countKind(h.Stores.Store, "tw-slow", saga.EventTimeout) != 2 ||
		h.countKind(h.Stores.Store, "tw-slow", saga.EventCompensated) != 1 {
		t.Errorf("tw-slow history %v: want 2 timeouts and one compensation", k)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		steps := []string{"reserve-inventory/do", "charge-payment/do"}
		if Refused(id) {
			steps = append(steps, "reserve-inventory/compensate")
		} else {
			steps = append(steps, "ship/do")
		}
		for _, s := range steps {
			if c := len(commands[id+"/"+s]); c != 1 {
				t.Errorf("%s %s: %d distinct commands sent, want 1 (one transition only)", id, s, c)
			}
		}
	}
	if c := len(commands["tw-slow/reserve-inventory/do"]); c != 2 {
		t.Errorf("tw-slow: %d commands, want 2 (two attempts)", c)
	}
}

func caseVersions(t *testing.T, h *Harness) {
	v1 := h.OrderDef(OrderOptions{Version: 1})
	v2 := h.OrderDef(OrderOptions{Version: 2, Extra: "audit"})
	held := make(chan broker.Delivery, 4)
	faults := &Faults{Hold: map[string]chan broker.Delivery{"ver-1/payment": held}}
	h.StartParticipants(faults)
	store := h.Stores.Store
	ctx := h.Ctx()
	eng1, stop1 := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{v1}})
	if _, err := saga.Start(ctx, eng1, v1, "ver-1", Order{ID: "ver-1"}); err != nil {
		t.Fatal(err)
	}
	h.Eventually("ver-1 awaits payment", func() bool {
		in, err := store.Get(ctx, "ver-1")
		return err == nil && in.StepName == "charge-payment" && in.Awaiting != ""
	})
	stop1()

	// A deploy that only has version 2 is refused, naming the instances.
	only2, err := saga.NewEngine(store, saga.Config{ReplyTopic: h.Topic("replies"), Logger: h.F.Logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := only2.Register(v2); err != nil {
		t.Fatal(err)
	}
	err = only2.Run(ctx)
	var ue *saga.UnregisteredError
	if !errors.Is(err, saga.ErrUnregisteredVersion) || !errors.As(err, &ue) || len(ue.Versions) != 1 ||
		ue.Versions[0].Type != "order-fulfilment" || ue.Versions[0].Version != 1 || ue.Versions[0].Instances != 1 ||
		ue.Versions[0].Example != "ver-1" {
		t.Fatalf("run without version 1: %v (%+v)", err, ue)
	}
	if !strings.Contains(err.Error(), "order-fulfilment version 1 (1 instances") {
		t.Errorf("error text %q", err)
	}
	// A reply for a version-1 instance reaching it is not applied there.
	cmd, _ := saga.ParseCommand((<-held).Message)
	reply := saga.NewReply(ctx, cmd, saga.OutcomeSuccess, []byte(`{"payment_id":"x"}`), "")
	if err := only2.HandleReply(ctx, broker.Delivery{Message: reply}); !errors.Is(err, saga.ErrUnregisteredVersion) {
		t.Errorf("reply for an unregistered version: %v, want ErrUnregisteredVersion", err)
	}
	if in, _ := store.Get(ctx, "ver-1"); in.StepName != "charge-payment" || in.Awaiting == "" {
		t.Errorf("the reply was applied by an engine without the version")
	}

	// The fleet runs both versions: ver-1 finishes on version 1.
	eng2, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{v1, v2}})
	faults.unhold("ver-1/payment")
	h.redeliver(broker.Delivery{Message: cmd.Message})
	in := h.WaitStatus(store, "ver-1", saga.StatusCompleted)
	if in.Version != 1 || h.Effects.Count("audit", "ver-1") != 0 || slices.ContainsFunc(h.mustHistory(store, "ver-1"),
		func(ev saga.Event) bool { return ev.Step == "audit" }) {
		t.Errorf("ver-1 ran version 2's step:%s", h.Describe(store, "ver-1"))
	}
	if _, err := saga.Start(ctx, eng2, v2, "ver-2", Order{ID: "ver-2"}); err != nil {
		t.Fatal(err)
	}
	in = h.WaitStatus(store, "ver-2", saga.StatusCompleted)
	if in.Version != 2 || h.Effects.Count("audit", "ver-2") != 1 {
		t.Errorf("ver-2: version %d, audited %d times", in.Version, h.Effects.Count("audit", "ver-2"))
	}
	if err := eng2.Check(ctx); err != nil {
		t.Errorf("check with both versions: %v", err)
	}
}

func (h *Harness) mustHistory(store saga.Store, id string) []saga.Event {
	h.T.Helper()
	evs, err := store.History(h.Ctx(), id, 0, 0)
	if err != nil {
		h.T.Fatal(err)
	}
	return evs
}

func caseBadInput(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	held := make(chan broker.Delivery, 4)
	faults := &Faults{Hold: map[string]chan broker.Delivery{"bad-1/inventory": held}}
	h.StartParticipants(faults)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	ctx := h.Ctx()
	if _, err := saga.Start(ctx, eng, def, "bad-1", Order{ID: "bad-1"}); err != nil {
		t.Fatal(err)
	}
	first := <-held
	cmd, err := saga.ParseCommand(first.Message)
	if err != nil {
		t.Fatal(err)
	}
	good := saga.NewReply(ctx, cmd, saga.OutcomeSuccess, nil, "")
	deliver := func(m broker.Message) error { return eng.HandleReply(ctx, broker.Delivery{Message: m, Attempt: 1}) }
	mutate := func(f func(m *broker.Message)) broker.Message {
		m := good
		m.ID = broker.NewID()
		m.Headers = maps2(good.Headers)
		f(&m)
		return m
	}
	// Cannot be attributed to an instance: dead-lettered at once.
	for name, m := range map[string]broker.Message{
		"no saga ID":         mutate(func(m *broker.Message) { delete(m.Headers, saga.HeaderSagaID) }),
		"NUL in the saga ID": mutate(func(m *broker.Message) { m.Headers[saga.HeaderSagaID] = "bad-1\x00" }),
		"no message ID":      mutate(func(m *broker.Message) { m.ID = "" }),
		"NUL in the ID":      mutate(func(m *broker.Message) { m.ID = "x\x00y" }),
	} {
		if err := deliver(m); !errors.Is(err, saga.ErrMalformedReply) || !errors.Is(err, dlq.ErrPermanent) {
			t.Errorf("%s: %v; want ErrMalformedReply and dlq.ErrPermanent", name, err)
		}
	}
	if err := deliver(mutate(func(m *broker.Message) { m.Headers[saga.HeaderSagaID] = "no-such-instance" })); !errors.Is(err, saga.ErrNotFound) || !errors.Is(err, dlq.ErrPermanent) {
		t.Errorf("reply for an unknown instance: %v; want ErrNotFound and dlq.ErrPermanent", err)
	}
	// Attributed but malformed: recorded in the history, acknowledged, no
	// effect on the instance.
	rejected := map[string]broker.Message{
		"bad outcome": mutate(func(m *broker.Message) { m.Headers[saga.HeaderOutcome] = "maybe" }),
		"bad action":  mutate(func(m *broker.Message) { m.Headers[saga.HeaderAction] = "undo\x00" }),
		"no command":  mutate(func(m *broker.Message) { delete(m.Headers, saga.HeaderCommand) }),
		"wrong step":  mutate(func(m *broker.Message) { m.Headers[saga.HeaderStep] = "ship" }),
		"huge reason": mutate(func(m *broker.Message) {
			m.Headers[saga.HeaderOutcome] = "nope"
			m.Headers[saga.HeaderReason] = strings.Repeat("\x00é", 20000)
		}),
	}
	for name, m := range rejected {
		if err := deliver(m); err != nil {
			t.Errorf("%s: %v; want it recorded and acknowledged", name, err)
		}
	}
	if n := h.countKind(store, "bad-1", saga.EventReplyRejected); n != len(rejected) {
		t.Errorf("%d rejected replies recorded, want %d:%s", n, len(rejected), h.Describe(store, "bad-1"))
	}
	if in, _ := store.Get(ctx, "bad-1"); in.Awaiting != cmd.Message.ID || in.Status != saga.StatusRunning {
		t.Errorf("a malformed reply moved the instance:%s", h.Describe(store, "bad-1"))
	}
	// The same rejected reply delivered again is not recorded twice.
	for _, m := range rejected {
		if err := deliver(m); err != nil {
			t.Error(err)
		}
		break
	}
	if n := h.countKind(store, "bad-1", saga.EventReplyRejected); n != len(rejected) {
		t.Errorf("a redelivered rejected reply was recorded again (%d)", n)
	}
	// The real reply still works.
	faults.unhold("bad-1/inventory")
	if err := deliver(good); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(store, "bad-1", saga.StatusCompleted)
	// A reply for a finished instance: recorded and ignored.
	late := mutate(func(*broker.Message) {})
	if err := deliver(late); err != nil {
		t.Errorf("reply for a finished instance: %v", err)
	}
	evs := h.mustHistory(store, "bad-1")
	last := evs[len(evs)-1]
	if last.Kind != saga.EventReplyIgnored || last.MessageID != late.ID || !strings.Contains(last.Detail, "already completed") {
		t.Errorf("reply for a finished instance recorded as %+v", last)
	}
	// A malformed command is dead-lettered by the participant helper.
	p, err := saga.NewParticipant(h.Stores.Participants, saga.ParticipantConfig{Name: "bad-input", Logger: h.F.Logger,
		Action: func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]broker.Message{
		"no headers":  {ID: "m-1", Topic: "x"},
		"bad attempt": mutate(func(m *broker.Message) { m.Headers[saga.HeaderAttempt] = "-1"; m.Headers[saga.HeaderReplyTo] = "r" }),
		"no reply-to": func() broker.Message {
			m := first.Message
			m.Headers = maps2(m.Headers)
			delete(m.Headers, saga.HeaderReplyTo)
			return m
		}(),
		"NUL in the ID": func() broker.Message { m := first.Message; m.ID = "a\x00"; return m }(),
	} {
		if err := p.Handle(ctx, broker.Delivery{Message: m}); !errors.Is(err, saga.ErrMalformedCommand) || !errors.Is(err, dlq.ErrPermanent) {
			t.Errorf("command with %s: %v; want ErrMalformedCommand and dlq.ErrPermanent", name, err)
		}
	}
}

func maps2(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func caseOperator(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	h.StartParticipants(nil)
	eng, _ := h.StartEngine(EngineOptions{Defs: []saga.AnyDefinition{def}})
	store := h.Stores.Store
	ctx := h.Ctx()
	ids := h.StartOrders(eng, def, "op", 10)
	h.WaitFinished(store, ids, false)
	list, err := store.List(ctx, saga.Query{Status: []saga.Status{saga.StatusCompleted}})
	if err != nil || len(list) != 9 {
		t.Fatalf("list completed: %d, %v; want 9", len(list), err)
	}
	if !slices.IsSortedFunc(list, func(a, b saga.Instance) int { return strings.Compare(a.ID, b.ID) }) {
		t.Errorf("list not in ID order")
	}
	var paged []string
	for after := ""; ; {
		page, err := store.List(ctx, saga.Query{AfterID: after, Limit: 3, Type: "order-fulfilment"})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, in := range page {
			paged = append(paged, in.ID)
		}
		after = page[len(page)-1].ID
	}
	if len(paged) != 10 {
		t.Errorf("paging listed %d, want 10", len(paged))
	}
	if l, _ := store.List(ctx, saga.Query{Type: "nothing"}); len(l) != 0 {
		t.Errorf("list of another type: %d", len(l))
	}
	if c, err := store.Counts(ctx); err != nil || len(c) != 0 {
		t.Errorf("counts of finished instances: %v, %v; want none", c, err)
	}
	if u, err := store.Unfinished(ctx); err != nil || len(u) != 0 {
		t.Errorf("unfinished: %v, %v; want none", u, err)
	}
	tl, err := eng.Timeline(ctx, "op-7")
	if err != nil {
		t.Fatal(err)
	}
	s := tl.String()
	for _, want := range []string{"saga op-7: order-fulfilment version 1, compensated", "step-failed", "card declined for op-7", "step-compensated"} {
		if !strings.Contains(s, want) {
			t.Errorf("timeline lacks %q:\n%s", want, s)
		}
	}
	steps := tl.Steps()
	if len(steps) != 2 || !steps[0].Done || !steps[0].Compensated || !steps[1].Failed || steps[0].Attempts != 1 {
		t.Errorf("step summary %+v", steps)
	}
	if _, err := store.Request(ctx, "op-1", saga.Request{Kind: "explode"}); err == nil {
		t.Errorf("unknown request kind accepted")
	}
	if _, err := store.History(ctx, "op-404", 0, 0); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("history of a missing instance: %v", err)
	}
	if evs, err := store.History(ctx, "op-1", 3, 2); err != nil || len(evs) != 2 || evs[0].Seq != 4 {
		t.Errorf("history page: %+v, %v", evs, err)
	}
	n, err := store.Cleanup(ctx, time.Now().Add(time.Hour), 4)
	if err != nil || n != 4 {
		t.Fatalf("cleanup: %d, %v; want 4", n, err)
	}
	n, err = store.Cleanup(ctx, time.Now().Add(time.Hour), 100)
	if err != nil || n != 6 {
		t.Fatalf("cleanup: %d, %v; want 6", n, err)
	}
	if _, err := store.Get(ctx, "op-1"); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("get after cleanup: %v", err)
	}
}
