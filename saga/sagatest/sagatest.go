// Package sagatest is the conformance suite of the saga ports. Every
// implementation of saga.Store, saga.ParticipantStore and saga.FlowStore
// runs it, on every broker it supports:
//
//	func TestConformance(t *testing.T) {
//		sagatest.Run(t, sagatest.Features{}, func(t *testing.T, pub broker.Publisher) sagatest.Stores {
//			store := newStoreOnFreshTables(t, pub) // its outbox publishes through pub
//			return sagatest.Stores{Store: store, Participants: ..., Flows: ...}
//		}, sagatest.MemoryBroker)
//	}
//
// The cases drive real engines, participants (the saga.Participant helper)
// and a flow tracker over the broker, and assert exact outcomes: the order
// flow (reserve inventory, charge payment as the pivot, ship as a
// retriable step) where refused payments release their inventory exactly
// once and the others complete; idempotent starts; step timeouts with
// compensation and late replies ignored; compensations that keep failing
// park the instance, which an operator retries once the fault is fixed;
// retriable steps that park and are skipped; cancellation and deadlines;
// the participant helper's handling of duplicate, reordered and late
// commands; redelivered replies; two engines racing on every instance;
// versioned definitions; bad input; engines killed at every step boundary;
// and choreographed flows reconstructed (and flagged when stuck) by the
// tracker.
package sagatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/saga"
)

// Stores is what a factory gives each case: the three stores on fresh,
// empty tables (or memory), whose outboxes publish through the publisher
// the factory was given.
type Stores struct {
	// Store is the orchestrator's store. Required.
	Store saga.Store
	// Participants is the participants' store. Required.
	Participants saga.ParticipantStore
	// Flows is the flow tracker's store. Required.
	Flows saga.FlowStore
	// Reopen returns another handle on the same Store, as another process
	// would open it (its own connections). The two-engine case gives the
	// second engine one. When nil, both engines share Store.
	Reopen func(t *testing.T) saga.Store
}

// StoreFactory returns fresh stores for one case whose outboxes publish to
// pub (at least once, in order per key, after the commit: the postgres
// factory runs an outbox.Relay on pub), and registers their cleanup with
// t.Cleanup.
type StoreFactory func(t *testing.T, pub broker.Publisher) Stores

// Broker carries commands, replies and events.
type Broker struct {
	Publisher  broker.Publisher
	Subscriber broker.Subscriber
	// Setup, when set, prepares a topic and a consumer group before a case
	// publishes to it (create a Kafka topic, declare RabbitMQ queues).
	Setup func(ctx context.Context, topic, group string) error
}

// BrokerFactory returns a broker for one case.
type BrokerFactory func(t *testing.T) Broker

// MemoryBroker is the BrokerFactory of the in-process memory broker.
func MemoryBroker(t *testing.T) Broker {
	b := memory.New(memory.Config{})
	t.Cleanup(func() { _ = b.Close() })
	return Broker{Publisher: b, Subscriber: b}
}

// Features tunes the suite.
type Features struct {
	// Orders is the number of orders of the order-flow case; a tenth of
	// them are refused by payment. Default 200.
	Orders int
	// CrashOrders is the number of orders driven through each kill point
	// of the crash case. Default 30.
	CrashOrders int
	// Timeout bounds each wait. Default 2 minutes.
	Timeout time.Duration
	// Logger receives the engines' logs. Default: discarded.
	Logger *slog.Logger
}

func (f Features) withDefaults() Features {
	if f.Orders <= 0 {
		f.Orders = 200
	}
	if f.CrashOrders <= 0 {
		f.CrashOrders = 30
	}
	if f.Timeout <= 0 {
		f.Timeout = 2 * time.Minute
	}
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
	return f
}

// Run runs every case, each in parallel with the others, on fresh stores
// and a fresh broker.
func Run(t *testing.T, f Features, stores StoreFactory, brokers BrokerFactory) {
	f = f.withDefaults()
	cases := []struct {
		name string
		fn   func(t *testing.T, h *Harness)
	}{
		{"StoreContract", caseStoreContract},
		{"ConflictReload", caseConflictReload},
		{"OrderFlow", caseOrderFlow},
		{"StartIdempotent", caseStartIdempotent},
		{"Timeout", caseTimeout},
		{"CompensationParks", caseCompensationParks},
		{"RetriableParksThenSkip", caseRetriableSkip},
		{"Cancel", caseCancel},
		{"Deadline", caseDeadline},
		{"LocalSteps", caseLocalSteps},
		{"DuplicateReplies", caseDuplicateReplies},
		{"TwoEngines", caseTwoEngines},
		{"Versions", caseVersions},
		{"BadInput", caseBadInput},
		{"Crash", caseCrash},
		{"Participant", caseParticipant},
		{"Tracker", caseTracker},
		{"Operator", caseOperator},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t, NewHarness(t, f, stores, brokers))
		})
	}
}

// RunOrderFlow runs only the order-flow case, with f.Orders orders: for
// brokers on which the whole suite would take too long.
func RunOrderFlow(t *testing.T, f Features, stores StoreFactory, brokers BrokerFactory) {
	f = f.withDefaults()
	caseOrderFlow(t, NewHarness(t, f, stores, brokers))
}

// Harness is one case's world: stores, broker, unique topic names, and the
// order flow's participants.
type Harness struct {
	T        *testing.T
	F        Features
	Stores   Stores
	Broker   Broker
	Prefix   string
	Effects  *Effects
	pub      *switchPublisher
	factory  StoreFactory
	topics   map[string]bool
	ctx      context.Context
	setupMu  sync.Mutex
	engines  []*engineRun
	partsRun bool
}

// NewHarness builds a harness: a broker, stores publishing through a
// publisher the harness can intercept (for crash injection), and a unique
// topic prefix.
func NewHarness(t *testing.T, f Features, stores StoreFactory, brokers BrokerFactory) *Harness {
	f = f.withDefaults()
	b := brokers(t)
	ctx, cancel := context.WithTimeout(context.Background(), f.Timeout+time.Minute)
	t.Cleanup(cancel)
	h := &Harness{T: t, F: f, Broker: b, Prefix: "saga_" + randomID(), Effects: newEffects(),
		pub: &switchPublisher{pub: b.Publisher}, factory: stores, topics: map[string]bool{}, ctx: ctx}
	h.Stores = stores(t, h.pub)
	return h
}

// Ctx is the case's context.
func (h *Harness) Ctx() context.Context { return h.ctx }

func randomID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Topic returns the case's name for topic.
func (h *Harness) Topic(name string) string { return h.Prefix + "_" + name }

// Setup prepares topic for group (once per pair).
func (h *Harness) Setup(topic, group string) {
	h.T.Helper()
	h.setupMu.Lock()
	defer h.setupMu.Unlock()
	if h.topics[topic+"\x00"+group] || h.Broker.Setup == nil {
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, time.Minute)
	defer cancel()
	if err := h.Broker.Setup(ctx, topic, group); err != nil {
		h.T.Fatalf("setup %s/%s: %v", topic, group, err)
	}
	h.topics[topic+"\x00"+group] = true
}

// Subscribe runs handler on topic in group until the case ends.
func (h *Harness) Subscribe(topic, group string, handler broker.Handler) {
	h.T.Helper()
	h.Setup(topic, group)
	h.subscribe(h.ctx, topic, group, handler)
}

func (h *Harness) subscribe(ctx context.Context, topic, group string, handler broker.Handler) chan error {
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		done <- h.Broker.Subscriber.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, handler)
	}()
	h.T.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(time.Minute):
			h.T.Errorf("subscription %s/%s did not stop", topic, group)
		}
	})
	return done
}

// Order is the order flow's instance data.
type Order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
	// Refuse makes payment refuse the charge.
	Refuse bool `json:"refuse,omitempty"`
	// PaymentID and Tracking come from the replies.
	PaymentID string `json:"payment_id,omitempty"`
	Tracking  string `json:"tracking,omitempty"`
}

// OrderOptions varies the order flow's definition.
type OrderOptions struct {
	// Name is the saga type; default "order-fulfilment".
	Name    string
	Version int
	// StepTimeout applies to every step (0: default); CompTimeout to the
	// compensation.
	StepTimeout, CompTimeout time.Duration
	Retry                    saga.Retry
	CompRetry                saga.Retry
	Deadline                 time.Duration
	// Extra appends a local step (to tell versions apart), which calls
	// OnExtra with the order ID once its transition committed.
	Extra   string
	OnExtra func(id string)
}

// OrderDef is the order flow (see OrderDefinition) on the case's topics;
// its Extra step counts its effect in h.Effects.
func (h *Harness) OrderDef(o OrderOptions) *saga.Definition[Order] {
	h.T.Helper()
	if o.Extra != "" && o.OnExtra == nil {
		name := o.Extra
		o.OnExtra = func(id string) { h.Effects.Add(name, id) }
	}
	def, err := OrderDefinition(h.Topic, o)
	if err != nil {
		h.T.Fatalf("define: %v", err)
	}
	return def
}

// OrderDefinition is the order flow: reserve-inventory (a command to
// topic("inventory"), compensated by a release command), charge-payment
// (the pivot, to topic("payment"), keeping the payment ID of the reply),
// ship (retriable, to topic("shipping"), keeping the tracking number), and
// an optional local step o.Extra. Processes that must run the same
// definition (an engine in another process) build it with the same topic
// function.
func OrderDefinition(topic func(string) string, o OrderOptions) (*saga.Definition[Order], error) {
	if o.Version == 0 {
		o.Version = 1
	}
	cmd := func(name, typ string) func(context.Context, *Order) (broker.Message, error) {
		return func(_ context.Context, ord *Order) (broker.Message, error) {
			b, err := json.Marshal(ord)
			return broker.Message{Topic: topic(name), Payload: b,
				Headers: map[string]string{broker.HeaderType: typ}}, err
		}
	}
	steps := []saga.Step[Order]{
		{Name: "reserve-inventory", Command: cmd("inventory", "inventory.reserve"),
			CompensationCommand: cmd("inventory", "inventory.release"),
			Timeout:             o.StepTimeout, CompensationTimeout: o.CompTimeout, Retry: o.Retry, CompensationRetry: o.CompRetry},
		{Name: "charge-payment", Kind: saga.Pivot, Command: cmd("payment", "payment.charge"), Timeout: o.StepTimeout, Retry: o.Retry,
			OnReply: func(_ context.Context, ord *Order, r saga.Reply) error {
				var v struct {
					PaymentID string `json:"payment_id"`
				}
				if err := r.Decode(&v); err != nil {
					return err
				}
				ord.PaymentID = v.PaymentID
				return nil
			}},
		{Name: "ship", Kind: saga.Retriable, Command: cmd("shipping", "shipping.ship"), Timeout: o.StepTimeout, Retry: o.Retry,
			OnReply: func(_ context.Context, ord *Order, r saga.Reply) error {
				ord.Tracking = string(r.Message.Payload)
				return nil
			}},
	}
	if o.Extra != "" {
		steps = append(steps, saga.Step[Order]{Name: o.Extra, Kind: saga.Retriable,
			Action: func(_ context.Context, tx saga.Tx, ord *Order) error {
				id := ord.ID
				if o.OnExtra != nil {
					tx.AfterCommit(func() { o.OnExtra(id) })
				}
				return nil
			}})
	}
	if o.Name == "" {
		o.Name = "order-fulfilment"
	}
	def, err := saga.Define(o.Name, o.Version, steps...)
	if err != nil {
		return nil, err
	}
	if o.Deadline > 0 {
		def = def.WithDeadline(o.Deadline)
	}
	return def, nil
}

// Faults lets a case make the participants misbehave. Every field is read
// on each command; set them before commands flow or under Lock.
type Faults struct {
	mu sync.Mutex
	// FailRelease makes the inventory release (compensation) refuse.
	FailRelease bool
	// FailShip makes shipping refuse.
	FailShip bool
	// Hold, keyed "<order ID>/<service>", drops the service's commands
	// for that order without an answer while the key is present, handing
	// each to the channel when it has room (a participant that never
	// replies; the case may deliver a command again later).
	Hold map[string]chan broker.Delivery
}

func (f *Faults) Lock()   { f.mu.Lock() }
func (f *Faults) Unlock() { f.mu.Unlock() }

// StartParticipants subscribes the three participant services of the
// order flow (built with saga.Participant on Stores.Participants), each
// recording its effects in h.Effects once its transaction committed.
func (h *Harness) StartParticipants(faults *Faults) { h.StartParticipantsObserved(faults, nil) }

// StartParticipantsObserved is StartParticipants calling observe with every
// command delivered to a participant service first.
func (h *Harness) StartParticipantsObserved(faults *Faults, observe func(broker.Delivery)) {
	h.T.Helper()
	if faults == nil {
		faults = &Faults{}
	}
	decode := func(c saga.Command) (Order, error) {
		var o Order
		return o, c.Decode(&o)
	}
	effect := func(tx saga.Tx, name, id string) { tx.AfterCommit(func() { h.Effects.Add(name, id) }) }
	services := []struct {
		name    string
		do      saga.ParticipantFunc
		compens saga.ParticipantFunc
	}{
		{"inventory",
			func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decode(c)
				if err != nil {
					return nil, saga.Refuse(err)
				}
				effect(tx, "reserve", o.ID)
				return nil, nil
			},
			func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decode(c)
				if err != nil {
					return nil, saga.Refuse(err)
				}
				faults.mu.Lock()
				fail := faults.FailRelease
				faults.mu.Unlock()
				if fail {
					return nil, saga.Refusef("warehouse system down")
				}
				effect(tx, "release", o.ID)
				return nil, nil
			}},
		{"payment",
			func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decode(c)
				if err != nil {
					return nil, saga.Refuse(err)
				}
				if o.Refuse {
					return nil, saga.Refusef("card declined for %s", o.ID)
				}
				effect(tx, "charge", o.ID)
				return json.Marshal(map[string]string{"payment_id": "pay-" + o.ID})
			}, nil},
		{"shipping",
			func(_ context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decode(c)
				if err != nil {
					return nil, saga.Refuse(err)
				}
				faults.mu.Lock()
				fail := faults.FailShip
				faults.mu.Unlock()
				if fail {
					return nil, saga.Refusef("carrier unavailable")
				}
				effect(tx, "ship", o.ID)
				return []byte("track-" + o.ID), nil
			}, nil},
	}
	for _, s := range services {
		p, err := saga.NewParticipant(h.Stores.Participants, saga.ParticipantConfig{Name: s.name, Action: s.do,
			Compensation: s.compens, Logger: h.F.Logger})
		if err != nil {
			h.T.Fatalf("participant %s: %v", s.name, err)
		}
		topic, name := h.Topic(s.name), s.name
		handler := func(ctx context.Context, d broker.Delivery) error {
			if observe != nil {
				observe(d)
			}
			if id := d.Headers[saga.HeaderSagaID]; id != "" && d.Headers[saga.HeaderAction] == saga.ActionDo {
				faults.mu.Lock()
				ch := faults.Hold[id+"/"+name]
				faults.mu.Unlock()
				if ch != nil {
					select {
					case ch <- d:
					default:
					}
					return nil
				}
			}
			return p.Handle(ctx, d)
		}
		h.Subscribe(topic, s.name, handler)
	}
	h.partsRun = true
}

// Effects counts the participants' committed effects by name and order.
type Effects struct {
	mu sync.Mutex
	n  map[string]map[string]int
}

func newEffects() *Effects { return &Effects{n: map[string]map[string]int{}} }

// Add counts one effect.
func (e *Effects) Add(name, id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n[name] == nil {
		e.n[name] = map[string]int{}
	}
	e.n[name][id]++
}

// Count returns how many times effect name was applied to id.
func (e *Effects) Count(name, id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.n[name][id]
}

// Total counts effect name over all orders.
func (e *Effects) Total(name string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.n[name] {
		n += c
	}
	return n
}

// EngineOptions tune an engine a case starts.
type EngineOptions struct {
	Store      saga.Store
	Defs       []saga.AnyDefinition
	Group      string
	ParkTopic  string
	Meter      *Meter
	Wrap       func(broker.Handler) broker.Handler
	AllowUnreg bool
}

type engineRun struct {
	eng    *saga.Engine
	cancel context.CancelFunc
	done   chan error
	subs   chan error
}

// StartEngine runs an engine on the case's reply topic until the case
// ends (or Stop). Replies are subscribed by the harness (through Wrap when
// set) so that a case can intercept them.
func (h *Harness) StartEngine(o EngineOptions) (*saga.Engine, func()) {
	h.T.Helper()
	if o.Store == nil {
		o.Store = h.Stores.Store
	}
	if o.Group == "" {
		o.Group = "engine"
	}
	cfg := saga.Config{ReplyTopic: h.Topic("replies"), PollInterval: 50 * time.Millisecond,
		ParkTopic: o.ParkTopic, Logger: h.F.Logger, AllowUnregistered: o.AllowUnreg, StatsInterval: 100 * time.Millisecond}
	if o.Meter != nil {
		cfg.MeterProvider = o.Meter
	}
	eng, err := saga.NewEngine(o.Store, cfg)
	if err != nil {
		h.T.Fatalf("engine: %v", err)
	}
	if err := eng.Register(o.Defs...); err != nil {
		h.T.Fatalf("register: %v", err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	run := &engineRun{eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { run.done <- eng.Run(ctx) }()
	handler := broker.Handler(eng.HandleReply)
	if o.Wrap != nil {
		handler = o.Wrap(handler)
	}
	h.Setup(h.Topic("replies"), o.Group)
	run.subs = make(chan error, 1)
	go func() {
		run.subs <- h.Broker.Subscriber.Subscribe(ctx, broker.Subscription{Topic: h.Topic("replies"), Group: o.Group}, handler)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			for _, c := range []chan error{run.done, run.subs} {
				select {
				case err := <-c:
					if err != nil && !errors.Is(err, context.Canceled) {
						h.T.Logf("engine stopped: %v", err)
					}
				case <-time.After(time.Minute):
					h.T.Errorf("engine did not stop")
				}
			}
		})
	}
	h.T.Cleanup(stop)
	return eng, stop
}

// StartOrders starts orders order-0 .. order-(n-1) of def; every tenth is
// refused by payment.
func (h *Harness) StartOrders(eng *saga.Engine, def *saga.Definition[Order], prefix string, n int) []string {
	h.T.Helper()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
		o := Order{ID: ids[i], Amount: 100 + i, Refuse: i%10 == 7}
		if _, err := saga.Start(h.ctx, eng, def, ids[i], o); err != nil {
			h.T.Fatalf("start %s: %v", ids[i], err)
		}
	}
	return ids
}

// Refused reports whether an order of StartOrders is refused by payment.
func Refused(id string) bool { return idIndex(id)%10 == 7 }

func idIndex(id string) int {
	i := strings.LastIndexByte(id, '-')
	n := 0
	for _, c := range id[i+1:] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// WaitFinished waits until every instance in ids finished (or parked when
// parkOK), and returns them.
func (h *Harness) WaitFinished(store saga.Store, ids []string, parkOK bool) map[string]saga.Instance {
	h.T.Helper()
	deadline := time.Now().Add(h.F.Timeout)
	out := make(map[string]saga.Instance, len(ids))
	pending := append([]string(nil), ids...)
	for len(pending) > 0 {
		var still []string
		for _, id := range pending {
			in, err := store.Get(h.ctx, id)
			if err != nil && !errors.Is(err, saga.ErrNotFound) {
				h.T.Fatalf("get %s: %v", id, err)
			}
			if err == nil && (in.Status.Finished() || parkOK && in.Status == saga.StatusParked) {
				out[id] = in
				continue
			}
			still = append(still, id)
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			h.T.Fatalf("%d of %d instances not finished after %v; first: %s", len(pending), len(ids), h.F.Timeout,
				h.Describe(store, pending[0]))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

// WaitStatus waits until instance id has status st.
func (h *Harness) WaitStatus(store saga.Store, id string, st saga.Status) saga.Instance {
	h.T.Helper()
	deadline := time.Now().Add(h.F.Timeout)
	for {
		in, err := store.Get(h.ctx, id)
		if err == nil && in.Status == st {
			return in
		}
		if time.Now().After(deadline) {
			h.T.Fatalf("instance %s not %s after %v: %s", id, st, h.F.Timeout, h.Describe(store, id))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Eventually waits for cond.
func (h *Harness) Eventually(what string, cond func() bool) {
	h.T.Helper()
	deadline := time.Now().Add(h.F.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			h.T.Fatalf("timed out after %v waiting for %s", h.F.Timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Describe renders an instance's timeline for failure messages.
func (h *Harness) Describe(store saga.Store, id string) string {
	tl, err := saga.LoadTimeline(h.ctx, store, id)
	if err != nil {
		return fmt.Sprintf("%s: %v", id, err)
	}
	return "\n" + tl.String()
}

// Kinds returns the kinds of an instance's history events.
func (h *Harness) Kinds(store saga.Store, id string) []saga.EventKind {
	h.T.Helper()
	evs, err := store.History(h.ctx, id, 0, 0)
	if err != nil {
		h.T.Fatalf("history %s: %v", id, err)
	}
	out := make([]saga.EventKind, len(evs))
	for i, ev := range evs {
		out[i] = ev.Kind
	}
	return out
}

// switchPublisher is the publisher the stores' outboxes publish through;
// the crash case intercepts it.
type switchPublisher struct {
	mu   sync.Mutex
	pub  broker.Publisher
	hook func(ctx context.Context, msgs []broker.Message) error // after a successful publish
}

func (s *switchPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	if err := s.pub.Publish(ctx, msgs...); err != nil {
		return err
	}
	s.mu.Lock()
	hook := s.hook
	s.mu.Unlock()
	if hook != nil {
		return hook(ctx, msgs)
	}
	return nil
}

func (s *switchPublisher) setHook(f func(ctx context.Context, msgs []broker.Message) error) {
	s.mu.Lock()
	s.hook = f
	s.mu.Unlock()
}
