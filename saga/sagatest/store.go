package sagatest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/saga"
)

// newInstance is a minimal instance of type "contract".
func newInstance(id string, wake time.Time) saga.Change {
	now := time.Now()
	return saga.Change{
		Instance: saga.Instance{ID: id, Type: "contract", Version: 1, Status: saga.StatusRunning, Step: 0, StepName: "a",
			Data: []byte(`{"n":1}`), Seq: 1, Revision: 1, CreatedAt: now, UpdatedAt: now, WakeAt: wake},
		Events: []saga.Event{{Seq: 1, At: now, Kind: saga.EventStarted, MessageID: "start-" + id}},
	}
}

// caseStoreContract checks the Store port's guarantees directly.
func caseStoreContract(t *testing.T, h *Harness) {
	ctx := h.Ctx()
	s := h.Stores.Store
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	create := func(c saga.Change) {
		t.Helper()
		tx, err := s.Begin(ctx)
		must(err)
		ok, err := tx.Create(ctx, c)
		must(err)
		if !ok {
			t.Fatalf("create %s: exists", c.Instance.ID)
		}
		committed := false
		tx.AfterCommit(func() { committed = true })
		must(tx.Commit(ctx))
		if !committed {
			t.Errorf("AfterCommit did not run")
		}
		must(tx.Rollback(ctx)) // after Commit: a no-op
	}
	create(newInstance("k-1", time.Time{}))

	// Create of an existing ID reports false and writes nothing.
	tx, err := s.Begin(ctx)
	must(err)
	dup := newInstance("k-1", time.Time{})
	dup.Instance.Status = saga.StatusCompleted
	if ok, err := tx.Create(ctx, dup); ok || err != nil {
		t.Errorf("create of an existing ID: %v, %v", ok, err)
	}
	must(tx.Rollback(ctx))
	if in, _ := s.Get(ctx, "k-1"); in.Status != saga.StatusRunning || in.Revision != 1 {
		t.Errorf("create of an existing ID changed it: %+v", in)
	}

	// Two transactions load revision 1; the first to save wins, the
	// second conflicts and writes nothing.
	tx1, err := s.Begin(ctx)
	must(err)
	tx2, err := s.Begin(ctx)
	must(err)
	in1, seen, err := tx1.Load(ctx, "k-1", "start-k-1")
	must(err)
	if !seen {
		t.Errorf("Load does not see the recorded message")
	}
	in2, _, err := tx2.Load(ctx, "k-1", "other")
	must(err)
	in1.Step, in1.Seq = 1, 2
	must(tx1.Save(ctx, saga.Change{Instance: in1, Events: []saga.Event{{Seq: 2, At: time.Now(), Kind: saga.EventStepDone, MessageID: "m-1"}}}))
	must(tx1.Commit(ctx))
	in2.Step, in2.Seq = 7, 2
	err = tx2.Save(ctx, saga.Change{Instance: in2, Events: []saga.Event{{Seq: 2, At: time.Now(), Kind: saga.EventStepDone}}})
	if err == nil {
		err = tx2.Commit(ctx)
	}
	if !errors.Is(err, saga.ErrConflict) {
		t.Errorf("the second save of one revision: %v, want ErrConflict", err)
	}
	_ = tx2.Rollback(ctx)
	got, err := s.Get(ctx, "k-1")
	must(err)
	if got.Step != 1 || got.Revision != 2 {
		t.Errorf("after the race: step %d revision %d, want 1 and 2", got.Step, got.Revision)
	}

	// A message already recorded cannot be recorded again.
	tx, err = s.Begin(ctx)
	must(err)
	in, _, err := tx.Load(ctx, "k-1", "")
	must(err)
	in.Seq = 3
	err = tx.Save(ctx, saga.Change{Instance: in, Events: []saga.Event{{Seq: 3, At: time.Now(), Kind: saga.EventReply, MessageID: "m-1"}}})
	if err == nil {
		err = tx.Commit(ctx)
	}
	if !errors.Is(err, saga.ErrConflict) {
		t.Errorf("recording a message twice: %v, want ErrConflict", err)
	}
	_ = tx.Rollback(ctx)

	// Savepoints: a failed one discards its AfterCommit functions; the
	// transaction goes on.
	tx, err = s.Begin(ctx)
	must(err)
	var ran []string
	boom := errors.New("boom")
	if err := tx.Savepoint(ctx, func(_ context.Context, stx saga.Tx) error {
		stx.AfterCommit(func() { ran = append(ran, "failed") })
		return boom
	}); !errors.Is(err, boom) {
		t.Errorf("savepoint error: %v", err)
	}
	must(tx.Savepoint(ctx, func(_ context.Context, stx saga.Tx) error {
		stx.AfterCommit(func() { ran = append(ran, "kept") })
		return nil
	}))
	in, _, err = tx.Load(ctx, "k-1", "")
	must(err)
	in.Seq = 3
	must(tx.Save(ctx, saga.Change{Instance: in, Events: []saga.Event{{Seq: 3, At: time.Now(), Kind: saga.EventStepDone}}}))
	must(tx.Commit(ctx))
	if !slices.Equal(ran, []string{"kept"}) {
		t.Errorf("after commit ran %v, want [kept]", ran)
	}

	// ClaimDue hands a due instance to one claimer at a time, and a save
	// by anybody else conflicts with the claim's commit.
	keys := []saga.DefinitionKey{{Type: "contract", Version: 1}}
	past := time.Now().Add(-time.Second)
	create(newInstance("k-due", past))
	create(newInstance("k-later", time.Now().Add(time.Hour)))
	other := newInstance("k-other-type", past)
	other.Instance.Type = "unregistered"
	create(other)
	if next, ok, err := s.NextWake(ctx, keys); err != nil || !ok || next.Sub(past).Abs() > time.Millisecond {
		t.Errorf("next wake %v %v %v, want %v", next, ok, err, past)
	}
	claimed := make(chan struct{})
	release := make(chan struct{})
	var wg sync.WaitGroup
	var outsider error
	wg.Add(1)
	go func() {
		defer wg.Done()
		ok, err := s.ClaimDue(ctx, keys, func(ctx context.Context, tx saga.StoreTx, in saga.Instance) error {
			if in.ID != "k-due" {
				return fmt.Errorf("claimed %s, want k-due", in.ID)
			}
			close(claimed)
			<-release
			in.WakeAt, in.Seq = time.Time{}, in.Seq+1
			return tx.Save(ctx, saga.Change{Instance: in, Events: []saga.Event{{Seq: in.Seq, At: time.Now(), Kind: saga.EventTimeout}}})
		})
		if !ok || err != nil {
			t.Errorf("claim: %v, %v", ok, err)
		}
	}()
	<-claimed
	if ok, err := s.ClaimDue(ctx, keys, func(context.Context, saga.StoreTx, saga.Instance) error {
		return errors.New("claimed twice")
	}); ok || err != nil {
		t.Errorf("second claim while the first holds the only due instance: %v, %v", ok, err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tx, err := s.Begin(ctx)
		if err != nil {
			outsider = err
			return
		}
		defer func() { _ = tx.Rollback(ctx) }()
		in, _, err := tx.Load(ctx, "k-due", "")
		if err != nil {
			outsider = err
			return
		}
		in.Seq++
		if outsider = tx.Save(ctx, saga.Change{Instance: in, Events: []saga.Event{{Seq: in.Seq, At: time.Now(), Kind: saga.EventStepDone}}}); outsider == nil {
			outsider = tx.Commit(ctx)
		}
	}()
	time.Sleep(50 * time.Millisecond) // let the outsider reach its save (it may wait for the claim)
	close(release)
	wg.Wait()
	if !errors.Is(outsider, saga.ErrConflict) {
		t.Errorf("save of a claimed instance: %v, want ErrConflict", outsider)
	}
	if ok, err := s.ClaimDue(ctx, keys, func(context.Context, saga.StoreTx, saga.Instance) error { return nil }); ok || err != nil {
		t.Errorf("claim with nothing due: %v, %v", ok, err)
	}
	// A failed claim leaves the instance due.
	create(newInstance("k-fail", past))
	if ok, err := s.ClaimDue(ctx, keys, func(context.Context, saga.StoreTx, saga.Instance) error { return errors.New("nope") }); !ok || err == nil {
		t.Errorf("failing claim: %v, %v", ok, err)
	}
	if in, _ := s.Get(ctx, "k-fail"); in.WakeAt.IsZero() || in.Revision != 1 {
		t.Errorf("a failed claim changed the instance: %+v", in)
	}
	if u, err := s.Unfinished(ctx); err != nil || len(u) != 2 {
		t.Errorf("unfinished: %+v %v", u, err)
	}
	if _, _, err := func() (saga.Instance, bool, error) {
		tx, _ := s.Begin(ctx)
		defer func() { _ = tx.Rollback(ctx) }()
		return tx.Load(ctx, "k-404", "")
	}(); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("load of a missing instance: %v", err)
	}
}

// conflictStore makes the first Save of one instance lose a race: just
// before it, another client records an operator request on the instance.
type conflictStore struct {
	saga.Store
	id   string
	once sync.Once
	hit  chan struct{}
}

type conflictTx struct {
	saga.StoreTx
	s *conflictStore
}

func (s *conflictStore) Begin(ctx context.Context) (saga.StoreTx, error) {
	tx, err := s.Store.Begin(ctx)
	return &conflictTx{StoreTx: tx, s: s}, err
}

func (t *conflictTx) Save(ctx context.Context, c saga.Change) error {
	if c.Instance.ID == t.s.id {
		t.s.once.Do(func() {
			if _, err := t.s.Store.Request(ctx, t.s.id, saga.Request{Kind: saga.RequestCancel, Reason: "raced"}); err == nil {
				close(t.s.hit)
			}
		})
	}
	return t.StoreTx.Save(ctx, c)
}

// caseConflictReload: a transition that loses a race is decided again on
// the reloaded instance, in a fresh transaction, and sees what won.
func caseConflictReload(t *testing.T, h *Harness) {
	def := h.OrderDef(OrderOptions{})
	h.StartParticipants(nil)
	meter := NewMeter()
	cs := &conflictStore{Store: h.Stores.Store, id: "race-1", hit: make(chan struct{})}
	eng, _ := h.StartEngine(EngineOptions{Store: cs, Defs: []saga.AnyDefinition{def}, Meter: meter})
	if _, err := saga.Start(h.Ctx(), eng, def, "race-1", Order{ID: "race-1"}); err != nil {
		t.Fatal(err)
	}
	in := h.WaitStatus(h.Stores.Store, "race-1", saga.StatusCompensated)
	select {
	case <-cs.hit:
	default:
		t.Fatal("no race was injected")
	}
	// The reply to reserve-inventory lost its race to the cancel request.
	// Decided again on the reloaded instance, it was either applied once
	// (and the cancel compensated the step it completed), or, when an
	// engine's timer had carried out the cancel first, recorded as late;
	// never applied to the state it had loaded.
	k := h.Kinds(h.Stores.Store, "race-1")
	replyFirst := []saga.EventKind{saga.EventStarted, saga.EventCommandSent, saga.EventRequested, saga.EventReply, saga.EventStepDone,
		saga.EventCancelled, saga.EventCompensating, saga.EventCommandSent, saga.EventReply, saga.EventStepCompensated, saga.EventCompensated}
	cancelFirst := []saga.EventKind{saga.EventStarted, saga.EventCommandSent, saga.EventRequested,
		saga.EventCancelled, saga.EventCompensating, saga.EventCommandSent, saga.EventReplyIgnored, saga.EventReply,
		saga.EventStepCompensated, saga.EventCompensated}
	if !slices.Equal(k, replyFirst) && !slices.Equal(k, cancelFirst) && !slices.Equal(withoutIgnored(k), withoutIgnored(cancelFirst)) {
		t.Errorf("history %v, want %v or %v%s", k, replyFirst, cancelFirst, h.Describe(h.Stores.Store, "race-1"))
	}
	if meter.Count(saga.MetricConflicts) < 1 {
		t.Errorf("conflict not counted")
	}
	if h.Effects.Count("reserve", "race-1") != 1 || h.Effects.Count("release", "race-1") != 1 || in.Failure != "cancelled: raced" {
		t.Errorf("reserved %d, released %d, failure %q", h.Effects.Count("reserve", "race-1"), h.Effects.Count("release", "race-1"), in.Failure)
	}
}
