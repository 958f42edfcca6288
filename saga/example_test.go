package saga_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
)

// Order is the data of the order-fulfilment saga.
type Order struct {
	ID        string `json:"id"`
	Amount    int    `json:"amount"`
	PaymentID string `json:"payment_id,omitempty"`
}

// command sends the order as JSON to topic.
func command(topic string) func(context.Context, *Order) (broker.Message, error) {
	return func(_ context.Context, o *Order) (broker.Message, error) {
		b, err := json.Marshal(o)
		return broker.Message{Topic: topic, Payload: b}, err
	}
}

// The order flow with three participant services, in one process on the
// memory broker and the memory stores: reserve inventory, charge the
// payment (the pivot: past it the order only moves forward), ship. The
// payment service refuses large amounts; that order's inventory is
// released. With PostgreSQL, use saga/postgres's Store and Participants
// (and an outbox relay) instead: nothing else changes.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := brokermem.New(brokermem.Config{})
	defer b.Close()
	store, _ := sagamem.New(sagamem.Config{Publisher: b})
	defer store.Close()
	parts, _ := sagamem.NewParticipants(sagamem.Config{Publisher: b})
	defer parts.Close()

	def, err := saga.Define("order-fulfilment", 1,
		saga.Step[Order]{Name: "reserve-inventory", Command: command("inventory"), CompensationCommand: command("inventory")},
		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: command("payment"),
			OnReply: func(_ context.Context, o *Order, r saga.Reply) error { return r.Decode(&o.PaymentID) }},
		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: command("shipping")},
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	eng, _ := saga.NewEngine(store, saga.Config{Subscriber: b})
	_ = eng.Register(def)
	go func() { _ = eng.Run(ctx) }()

	// The participant services: each action (and compensation) happens
	// once per order, however often its command is delivered.
	services := map[string]saga.ParticipantConfig{
		"inventory": {
			Action: func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil },
			Compensation: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
				fmt.Println("inventory released for", c.SagaID)
				return nil, nil
			}},
		"payment": {Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
			var o Order
			if err := c.Decode(&o); err != nil {
				return nil, saga.Refuse(err)
			}
			if o.Amount > 1000 {
				return nil, saga.Refusef("card declined")
			}
			return json.Marshal("pay-" + o.ID)
		}},
		"shipping": {Action: func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil }},
	}
	for name, cfg := range services {
		cfg.Name = name
		p, _ := saga.NewParticipant(parts, cfg)
		go func() { _ = b.Subscribe(ctx, broker.Subscription{Topic: name, Group: name}, p.Handle) }()
	}

	for _, o := range []Order{{ID: "order-1", Amount: 50}, {ID: "order-2", Amount: 5000}} {
		if _, err := saga.Start(ctx, eng, def, o.ID, o); err != nil {
			fmt.Println(err)
			return
		}
		var in saga.Instance
		for in, _ = store.Get(ctx, o.ID); !in.Status.Finished(); in, _ = store.Get(ctx, o.ID) {
			time.Sleep(time.Millisecond)
		}
		var got Order
		_ = json.Unmarshal(in.Data, &got)
		line := fmt.Sprintf("%s: %s", o.ID, in.Status)
		if got.PaymentID != "" {
			line += ", payment " + got.PaymentID
		}
		if in.Failure != "" {
			line += ": " + in.Failure
		}
		fmt.Println(line)
	}
	// Output:
	// order-1: completed, payment pay-order-1
	// inventory released for order-2
	// order-2: compensated: step "charge-payment" failed: refused: card declined
}

// A definition drawn as a Mermaid flowchart: steps, kinds, where each
// failure leads.
func ExampleDefinition_Mermaid() {
	def, _ := saga.Define("order-fulfilment", 2,
		saga.Step[Order]{Name: "reserve-inventory", Command: command("inventory"), CompensationCommand: command("inventory")},
		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: command("payment")},
		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: command("shipping")},
	)
	fmt.Print(def.Mermaid())
	// Output:
	// ---
	// title: order-fulfilment v2
	// ---
	// flowchart TD
	//     start([start])
	//     completed([completed])
	//     s0["reserve-inventory<br/><i>command</i>"]
	//     c0["undo reserve-inventory<br/><i>command</i>"]
	//     s1{{"charge-payment<br/><i>pivot, command</i>"}}
	//     s2[/"ship<br/><i>retriable, command</i>"/]
	//     start --> s0
	//     s0 --> s1
	//     s0 -. "refused, cancelled" .-> compensated
	//     s0 -. "no reply" .-> c0
	//     c0 -.-> compensated
	//     c0 -. "fails past limit" .-> parked
	//     s1 --> s2
	//     s1 -. refused .-> c0
	//     s1 -. "no reply" .-> parked
	//     s2 --> completed
	//     s2 -. "fails past limit" .-> parked
	//     compensated([compensated])
	//     parked([parked])
}

// A choreographed flow followed by the tracker: the events of one order
// with the correlation-id and causation-id the Choreography helpers set,
// recorded in the tracker, drawn as a sequence diagram; the flow stopped
// after the inventory was reserved.
func ExampleTracker() {
	ctx := context.Background()
	tracker, _ := saga.NewTracker(sagamem.NewFlows(), saga.TrackerConfig{Flows: []saga.FlowSpec{{
		Name:     "order",
		Events:   []string{"order.placed", "inventory.reserved", "payment.charged"},
		Terminal: []string{"order.shipped", "order.cancelled"},
		Deadline: time.Minute,
	}}})
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	placed := saga.Choreography{Service: "orders"}.Begin(ctx, "orders", "order.placed", nil)
	placed.Time = t0
	reserved := saga.Choreography{Service: "inventory"}.Next(ctx, placed, "inventory", "inventory.reserved", nil)
	reserved.Time = t0.Add(40 * time.Millisecond)
	_ = tracker.Record(ctx, placed, reserved)

	stuck, _ := tracker.Stuck(ctx, 10)
	for _, f := range stuck {
		fmt.Printf("stuck after %s from %s, %d events\n", f.LastType, f.LastSource, f.Events)
	}
	flow, _ := tracker.Flow(ctx, placed.ID)
	fmt.Print(strings.ReplaceAll(flow.Mermaid(), placed.ID, "<correlation-id>"))
	// Output:
	// stuck after inventory.reserved from inventory, 2 events
	// sequenceDiagram
	//     title order <correlation-id>
	//     participant p0 as orders
	//     participant p1 as inventory
	//     p0->>p1: order.placed (+0s)
	//     p1->>p1: inventory.reserved (+40ms)
	//     Note over p1: stopped after inventory.reserved since 2025-03-01T12:00:00Z
}
