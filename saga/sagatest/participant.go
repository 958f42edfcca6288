package sagatest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

// replies collects the replies on a topic by the command they answer.
type replies struct {
	mu sync.Mutex
	by map[string][]saga.Reply
}

func (r *replies) handle(_ context.Context, d broker.Delivery) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := saga.Reply{Outcome: saga.Outcome(d.Headers[saga.HeaderOutcome]), Reason: d.Headers[saga.HeaderReason],
		CommandID: d.Headers[saga.HeaderCommand], Step: d.Headers[saga.HeaderStep], SagaID: d.Headers[saga.HeaderSagaID],
		Compensate: d.Headers[saga.HeaderAction] == saga.ActionCompensate, Message: d.Message}
	r.by[rep.CommandID] = append(r.by[rep.CommandID], rep)
	return nil
}

func (r *replies) get(cmd string) []saga.Reply {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]saga.Reply(nil), r.by[cmd]...)
}

func caseParticipant(t *testing.T, h *Harness) {
	ctx := h.Ctx()
	replyTopic := h.Topic("p-replies")
	rs := &replies{by: map[string][]saga.Reply{}}
	h.Subscribe(replyTopic, "collector", rs.handle)
	var mu sync.Mutex
	fail := map[string]error{} // saga ID -> error the action returns
	p, err := saga.NewParticipant(h.Stores.Participants, saga.ParticipantConfig{Name: "p", Logger: h.F.Logger,
		Action: func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
			h.Effects.Add("try", c.SagaID)
			mu.Lock()
			err := fail[c.SagaID]
			mu.Unlock()
			if err != nil {
				if err.Error() == "panic" {
					panic("participant bug")
				}
				return nil, err
			}
			id := c.SagaID
			tx.AfterCommit(func() { h.Effects.Add("act", id) })
			return []byte("done-" + c.SagaID), nil
		},
		Compensation: func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
			id := c.SagaID
			tx.AfterCommit(func() { h.Effects.Add("undo", id) })
			return nil, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	command := func(sagaID string, compensate bool, attempt int) broker.Message {
		m := broker.NewMessage(h.Topic("p-commands"), []byte(`{}`))
		action := saga.ActionDo
		if compensate {
			action = saga.ActionCompensate
		}
		m.Headers = map[string]string{saga.HeaderSagaID: sagaID, saga.HeaderType: "t", saga.HeaderStep: "s",
			saga.HeaderAction: action, saga.HeaderAttempt: strconv.Itoa(attempt), saga.HeaderReplyTo: replyTopic}
		return m
	}
	handle := func(m broker.Message) error { return p.Handle(ctx, broker.Delivery{Message: m, Attempt: 1}) }
	mustHandle := func(m broker.Message) {
		t.Helper()
		if err := handle(m); err != nil {
			t.Fatalf("handle %s: %v", m.ID, err)
		}
	}
	expectReplies := func(cmd broker.Message, n int, outcome saga.Outcome, payload string) {
		t.Helper()
		h.Eventually(fmt.Sprintf("%d replies to %s", n, cmd.ID), func() bool { return len(rs.get(cmd.ID)) >= n })
		got := rs.get(cmd.ID)
		if len(got) != n {
			t.Errorf("%d replies to %s, want %d", len(got), cmd.ID, n)
		}
		for _, r := range got {
			if r.Outcome != outcome || string(r.Message.Payload) != payload || r.SagaID != cmd.Headers[saga.HeaderSagaID] ||
				r.Message.Headers[broker.HeaderCausationID] != cmd.ID || r.Message.Headers[broker.HeaderCorrelationID] != r.SagaID {
				t.Errorf("reply to %s: %s %q payload %q headers %v; want %s %q", cmd.ID, r.Outcome, r.Reason, r.Message.Payload,
					r.Message.Headers, outcome, payload)
			}
		}
	}
	count := func(name, id string, want int) {
		t.Helper()
		if got := h.Effects.Count(name, id); got != want {
			t.Errorf("%s %s: %d, want %d", name, id, got, want)
		}
	}

	// A duplicate delivery: acted on once, answered twice with the stored
	// outcome.
	c1 := command("dup", false, 1)
	mustHandle(c1)
	mustHandle(c1)
	expectReplies(c1, 2, saga.OutcomeSuccess, "done-dup")
	count("act", "dup", 1)
	// The engine asks again (a new command after a timeout): the stored
	// outcome answers the new command.
	c1b := command("dup", false, 2)
	mustHandle(c1b)
	expectReplies(c1b, 1, saga.OutcomeSuccess, "done-dup")
	count("act", "dup", 1)
	count("try", "dup", 1)

	// A compensation before its action: a null compensation, and the
	// action never runs afterwards.
	comp := command("early", true, 1)
	mustHandle(comp)
	expectReplies(comp, 1, saga.OutcomeSuccess, "")
	late := command("early", false, 1)
	mustHandle(late)
	expectReplies(late, 1, saga.OutcomeFailure, "")
	count("try", "early", 0)
	count("undo", "early", 0)

	// Action, compensation, duplicate compensation: undone once.
	mustHandle(command("undo", false, 1))
	u1, u2 := command("undo", true, 1), command("undo", true, 2)
	mustHandle(u1)
	mustHandle(u1)
	mustHandle(u2)
	expectReplies(u1, 2, saga.OutcomeSuccess, "")
	expectReplies(u2, 1, saga.OutcomeSuccess, "")
	count("act", "undo", 1)
	count("undo", "undo", 1)
	// ... and the action arriving again after that does not run.
	again := command("undo", false, 3)
	mustHandle(again)
	expectReplies(again, 1, saga.OutcomeFailure, "")
	count("try", "undo", 1)

	// A refusal: the same command again gets the same refusal without a
	// new try; a new command (the engine asking again) tries again.
	mu.Lock()
	fail["refuse"] = saga.Refusef("out of stock")
	mu.Unlock()
	r1 := command("refuse", false, 1)
	mustHandle(r1)
	mustHandle(r1)
	expectReplies(r1, 2, saga.OutcomeFailure, "")
	if got := rs.get(r1.ID); len(got) > 0 && got[0].Reason != "out of stock" {
		t.Errorf("refusal reason %q", got[0].Reason)
	}
	count("try", "refuse", 1)
	mu.Lock()
	delete(fail, "refuse")
	mu.Unlock()
	r2 := command("refuse", false, 2)
	mustHandle(r2)
	expectReplies(r2, 1, saga.OutcomeSuccess, "done-refuse")
	count("try", "refuse", 2)
	count("act", "refuse", 1)

	// A transient error (and a panic): nothing recorded, no reply; the
	// redelivery acts.
	for _, e := range []error{errors.New("database blip"), errors.New("panic")} {
		id := "transient-" + e.Error()[:5]
		mu.Lock()
		fail[id] = e
		mu.Unlock()
		tc := command(id, false, 1)
		if err := handle(tc); err == nil || errors.Is(err, saga.ErrRefused) {
			t.Errorf("transient error: %v", err)
		}
		mu.Lock()
		delete(fail, id)
		mu.Unlock()
		mustHandle(tc)
		expectReplies(tc, 1, saga.OutcomeSuccess, "done-"+id)
		count("act", id, 1)
	}

	// Concurrent duplicates: one effect.
	cc := command("concurrent", false, 1)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := handle(cc); err != nil {
				t.Errorf("concurrent duplicate: %v", err)
			}
		}()
	}
	wg.Wait()
	expectReplies(cc, 8, saga.OutcomeSuccess, "done-concurrent")
	count("act", "concurrent", 1)
	// Concurrent action and compensation of a new step: either order is
	// fine, never both effects without the undo.
	for i := range 10 {
		id := fmt.Sprintf("race-%d", i)
		do, undo := command(id, false, 1), command(id, true, 1)
		wg.Add(2)
		go func() { defer wg.Done(); _ = handle(do) }()
		go func() { defer wg.Done(); _ = handle(undo) }()
		wg.Wait()
		if a, u := h.Effects.Count("act", id), h.Effects.Count("undo", id); a != u {
			t.Errorf("%s: acted %d times, undone %d times", id, a, u)
		}
	}
}
