package main

import (
	"errors"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/saga"
)

// TestChange: what each message does to the read model; a malformed order
// event is a permanent error (dead-lettered at once, never retried in a
// loop); messages that are not the projection's change nothing.
func TestChange(t *testing.T) {
	placed := broker.NewMessage("orders", []byte(`{"id":"o-1","customer":"ada","amount":5}`))
	placed.Headers = map[string]string{broker.HeaderType: "order.placed"}
	reply := func(step, action string, outcome saga.Outcome, payload string) broker.Message {
		m := broker.NewMessage("saga.replies", []byte(payload))
		m.Headers = map[string]string{saga.HeaderSagaID: "o-1", saga.HeaderStep: step, saga.HeaderAction: action,
			saga.HeaderOutcome: string(outcome), saga.HeaderReason: "declined"}
		return m
	}
	for _, c := range []struct {
		m    broker.Message
		want View
		ok   bool
	}{
		{placed, View{ID: "o-1", Customer: "ada", Amount: 5}, true},
		{reply("reserve", saga.ActionDo, saga.OutcomeSuccess, ""), View{ID: "o-1", Inventory: "reserved"}, true},
		{reply("reserve", saga.ActionCompensate, saga.OutcomeSuccess, ""), View{ID: "o-1", Inventory: "released"}, true},
		{reply("charge", saga.ActionDo, saga.OutcomeSuccess, `"pay-1"`), View{ID: "o-1", Payment: "charged pay-1"}, true},
		{reply("charge", saga.ActionDo, saga.OutcomeFailure, ""), View{ID: "o-1", Payment: "refused: declined"}, true},
		{reply("ship", saga.ActionDo, saga.OutcomeSuccess, ""), View{ID: "o-1", Shipping: "shipped"}, true},
		{reply("ship", saga.ActionDo, saga.OutcomeFailure, ""), View{}, false},
		{broker.NewMessage("orders", []byte("not ours")), View{}, false},
	} {
		got, ok, err := change(c.m)
		if err != nil || ok != c.ok || (ok && got != c.want) {
			t.Errorf("change(%v) = %+v, %v, %v; want %+v, %v", c.m.Headers, got, ok, err, c.want, c.ok)
		}
	}
	for _, payload := range []string{`{`, `{"customer":"no id"}`, "\xff"} {
		bad := broker.NewMessage("orders", []byte(payload))
		bad.Headers = map[string]string{broker.HeaderType: "order.placed"}
		if _, _, err := change(bad); !errors.Is(err, dlq.ErrPermanent) {
			t.Errorf("malformed order event %q: %v, want dlq.ErrPermanent", payload, err)
		}
	}
	v := View{ID: "o-1", Customer: "ada", Inventory: "released", Payment: "refused: declined"}
	if s := v.status(); s != "cancelled: payment refused: declined" {
		t.Errorf("status %q", s)
	}
}
