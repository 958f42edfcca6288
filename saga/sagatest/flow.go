package sagatest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

func caseTracker(t *testing.T, h *Harness) {
	ctx := h.Ctx()
	pub := h.Broker.Publisher
	topics := map[string]string{"orders": h.Topic("orders"), "inventory": h.Topic("inventory-events"),
		"payment": h.Topic("payment-events"), "shipping": h.Topic("shipping-events")}
	tracker, err := saga.NewTracker(h.Stores.Flows, saga.TrackerConfig{Logger: h.F.Logger, Flows: []saga.FlowSpec{{
		Name:     "order",
		Events:   []string{"order.placed", "inventory.reserved", "payment.charged"},
		Terminal: []string{"order.shipped", "order.cancelled"},
		Deadline: 2 * time.Second,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// Every event reaches the tracker twice (a redelivery): recorded once.
	for _, topic := range topics {
		h.Subscribe(topic, "tracker", func(ctx context.Context, d broker.Delivery) error {
			if err := tracker.Handle(ctx, d); err != nil {
				return err
			}
			return tracker.Handle(ctx, d)
		})
	}
	var mu sync.Mutex
	stuck := map[string]bool{} // correlation IDs payment drops
	// The services of the choreography, each reacting to the previous
	// event.
	react := func(service, in, out, typ string) {
		ch := saga.Choreography{Service: service}
		h.Subscribe(topics[in], service, func(ctx context.Context, d broker.Delivery) error {
			mu.Lock()
			drop := service == "payment" && stuck[d.Headers[broker.HeaderCorrelationID]]
			mu.Unlock()
			if drop {
				return nil
			}
			return pub.Publish(ctx, ch.Next(ctx, d.Message, topics[out], typ, d.Payload))
		})
	}
	for topic, group := range map[string]string{topics["inventory"]: "payment", topics["payment"]: "shipping", topics["orders"]: "inventory"} {
		h.Setup(topic, group)
	}
	react("inventory", "orders", "inventory", "inventory.reserved")
	react("payment", "inventory", "payment", "payment.charged")
	react("shipping", "payment", "shipping", "order.shipped")

	orders := saga.Choreography{Service: "orders"}
	const n = 20
	var corrs []string
	for i := range n {
		m := orders.Begin(ctx, topics["orders"], "order.placed", fmt.Appendf(nil, `{"order":%d}`, i))
		if i == 13 {
			mu.Lock()
			stuck[m.ID] = true
			mu.Unlock()
		}
		corrs = append(corrs, m.ID)
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	// Untracked events are acknowledged and ignored.
	if err := tracker.Handle(ctx, broker.Delivery{Message: broker.NewMessage("elsewhere", nil)}); err != nil {
		t.Errorf("untracked event: %v", err)
	}
	stuckID := corrs[13]
	done := true
	// Each topic is consumed by its own subscription, so a flow's events
	// may reach the tracker in any order: wait for all of them.
	h.Eventually("the flows to finish", func() bool {
		fs, err := h.Stores.Flows.Flows(ctx, saga.FlowQuery{Flow: "order", Done: &done, Limit: 1000})
		if err != nil || len(fs) != n-1 {
			return false
		}
		for _, f := range fs {
			if f.Events != 4 {
				return false
			}
		}
		return true
	})
	for i, corr := range corrs {
		ft, err := tracker.Flow(ctx, corr)
		if err != nil {
			t.Fatal(err)
		}
		if i == 13 {
			continue
		}
		var types []string
		for _, ev := range ft.Events {
			types = append(types, ev.Source+":"+ev.Type)
		}
		want := "orders:order.placed inventory:inventory.reserved payment:payment.charged shipping:order.shipped"
		if got := strings.Join(types, " "); got != want || ft.Flow.Events != 4 || !ft.Flow.Done || ft.Flow.LastType != "order.shipped" {
			t.Errorf("flow %d: %s (%d events, done %v, last %s); want %s", i, got, ft.Flow.Events, ft.Flow.Done, ft.Flow.LastType, want)
		}
		for j := 1; j < len(ft.Events); j++ {
			if ft.Events[j].CausationID != ft.Events[j-1].MessageID {
				t.Errorf("flow %d: event %d is not caused by the one before", i, j)
			}
		}
		if i == 0 {
			d := ft.Mermaid()
			for _, want := range []string{"sequenceDiagram", "participant p0 as orders", "p0->>p1: order.placed",
				"p2->>p3: payment.charged", "order.shipped ends the flow"} {
				if !strings.Contains(d, want) {
					t.Errorf("diagram lacks %q:\n%s", want, d)
				}
			}
		}
	}
	// The stopped flow is flagged once past its deadline: where it
	// stopped, and since when.
	var flagged []saga.FlowSummary
	h.Eventually("the stopped flow to be flagged", func() bool {
		var err error
		flagged, err = tracker.Stuck(ctx, 10)
		return err == nil && len(flagged) > 0 && flagged[0].Events == 2
	})
	if len(flagged) != 1 || flagged[0].CorrelationID != stuckID || flagged[0].LastType != "inventory.reserved" ||
		flagged[0].LastSource != "inventory" || flagged[0].Done || flagged[0].Events != 2 || flagged[0].LastAt.IsZero() {
		t.Errorf("stuck flows %+v; want %s stopped after inventory.reserved", flagged, stuckID)
	}
	ft, _ := tracker.Flow(ctx, stuckID)
	if d := ft.Mermaid(); !strings.Contains(d, "stopped after inventory.reserved since") {
		t.Errorf("stuck diagram:\n%s", d)
	}
	if _, err := tracker.Flow(ctx, "no-such-flow"); err == nil {
		t.Errorf("missing flow: no error")
	}
}
