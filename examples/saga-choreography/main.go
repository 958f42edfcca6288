// Command saga-choreography runs the order flow by choreography: no
// orchestrator, each service reacts to the previous service's event and
// emits its own.
//
//	orders:    (a customer orders)       -> order.placed
//	inventory: order.placed              -> inventory.reserved
//	payment:   inventory.reserved        -> payment.charged | payment.refused (over 1000)
//	shipping:  payment.charged           -> order.shipped            (the flow ends)
//	inventory: payment.refused           -> inventory.released       (compensation)
//	orders:    inventory.released        -> order.cancelled          (the flow ends)
//
// saga.Choreography derives each event from the one it reacts to: the
// flow's correlation-id, a causation-id naming that event, the key (so a
// flow's events keep their order per topic) and the trace. A saga.Tracker,
// subscribed to every topic in a group of its own, puts each flow back
// together from those headers and reports the flows that stopped short of
// a terminal event within their deadline: here the shipping service is
// down while order-3 is placed, the tracker flags the flow as stuck after
// payment.charged, and the flow completes once shipping is back (the broker
// kept its event). Each service deduplicates its input on the message ID
// (idempotency.Consumer), since every broker delivers at least once.
//
// It runs with no infrastructure, on the in-process memory broker and the
// memory flow store:
//
//	go run ./examples/saga-choreography
//
// and on Kafka or RabbitMQ (STEADFAST_KAFKA_BROKERS, STEADFAST_RABBITMQ_URL)
// with the tracker's flows in PostgreSQL (STEADFAST_POSTGRES_URL; it
// creates example_flow and example_flow_event) when those are set:
//
//	make services && . .services/env && go run ./examples/saga-choreography
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/idempotency"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// backends says which servers to use; empty fields mean "in process".
type backends struct {
	kafkaBrokers string // STEADFAST_KAFKA_BROKERS
	rabbitmqURL  string // STEADFAST_RABBITMQ_URL
	postgresURL  string // STEADFAST_POSTGRES_URL
}

func backendsFromEnv() backends {
	return backends{
		kafkaBrokers: os.Getenv("STEADFAST_KAFKA_BROKERS"),
		rabbitmqURL:  os.Getenv("STEADFAST_RABBITMQ_URL"),
		postgresURL:  os.Getenv("STEADFAST_POSTGRES_URL"),
	}
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, backendsFromEnv()); err != nil {
		log.Fatal(err)
	}
}

// Order is every event's payload.
type Order struct {
	ID     string `json:"id"`
	Item   string `json:"item"`
	Amount int    `json:"amount"`
}

// The payment service's rule, so the output is the same on every run.
const maxAmount = 1000

// The flow, as the tracker knows it.
var orderFlow = saga.FlowSpec{
	Name:     "order",
	Events:   []string{"order.placed", "inventory.reserved", "payment.charged", "payment.refused", "inventory.released"},
	Terminal: []string{"order.shipped", "order.cancelled"},
	Deadline: time.Second, // a flow not done a second after it began is stuck
}

// reaction is one service's rule: on an event of type on (consumed from
// topic from), emit what react returns (nothing when it returns "").
type reaction struct {
	service string
	from    string // topic suffix: orders, inventory, payment, shipping
	on      string
	react   func(o Order) (topic, eventType, story string)
}

var reactions = []reaction{
	{"inventory", "orders", "order.placed", func(o Order) (string, string, string) {
		return "inventory", "inventory.reserved", "reserved 1 " + o.Item
	}},
	{"payment", "inventory", "inventory.reserved", func(o Order) (string, string, string) {
		if o.Amount > maxAmount {
			return "payment", "payment.refused", fmt.Sprintf("refused %d (card declined)", o.Amount)
		}
		return "payment", "payment.charged", fmt.Sprintf("charged %d", o.Amount)
	}},
	{"shipping", "payment", "payment.charged", func(o Order) (string, string, string) {
		return "shipping", "order.shipped", "shipped " + o.Item
	}},
	{"inventory", "payment", "payment.refused", func(o Order) (string, string, string) {
		return "inventory", "inventory.released", "released 1 " + o.Item + " (compensation)"
	}},
	{"orders", "inventory", "inventory.released", func(o Order) (string, string, string) {
		return "orders", "order.cancelled", "cancelled"
	}},
}

// groups lists, per topic suffix, the consumer groups reading it: one per
// reacting service, plus the tracker's.
func groups() map[string][]string {
	g := map[string][]string{"orders": {"tracker"}, "inventory": {"tracker"}, "payment": {"tracker"}, "shipping": {"tracker"}}
	for _, r := range reactions {
		if !contains(g[r.from], r.service) {
			g[r.from] = append(g[r.from], r.service)
		}
	}
	return g
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// openBroker picks Kafka, RabbitMQ or the memory broker, and prepares the
// topics and groups so that nothing published before a group subscribes is
// lost.
func openBroker(ctx context.Context, out io.Writer, be backends, prefix string) (broker.Publisher, broker.Subscriber, func(), error) {
	topics := groups()
	switch {
	case be.kafkaBrokers != "":
		cfg := kafka.Config{Brokers: kafka.ParseBrokers(be.kafkaBrokers), ClientID: "example-choreography"}
		admin, err := kafka.NewAdmin(cfg)
		if err != nil {
			return nil, nil, nil, err
		}
		defer admin.Close()
		for t := range topics {
			if err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: prefix + t, Partitions: 3}); err != nil && !errors.Is(err, kafka.ErrTopicExists) {
				return nil, nil, nil, err
			}
		}
		pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
		if err != nil {
			return nil, nil, nil, err
		}
		sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg})
		if err != nil {
			pub.Close()
			return nil, nil, nil, err
		}
		fmt.Fprintln(out, "broker: kafka")
		return pub, sub, func() { sub.Close(); pub.Close() }, nil
	case be.rabbitmqURL != "":
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: be.rabbitmqURL, Name: "example-choreography"})
		if err != nil {
			return nil, nil, nil, err
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
		if err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
		if err != nil {
			pub.Close()
			conn.Close()
			return nil, nil, nil, err
		}
		for t, gs := range topics {
			if err := sub.Setup(ctx, prefix+t, gs...); err != nil {
				sub.Close()
				pub.Close()
				conn.Close()
				return nil, nil, nil, err
			}
		}
		fmt.Fprintln(out, "broker: rabbitmq")
		return pub, sub, func() {
			sub.Close()
			pub.Close()
			for t, gs := range topics { // remove this run's exchanges and queues
				if topo, err := sub.Topology(prefix+t, gs...); err == nil {
					_ = conn.Delete(context.WithoutCancel(ctx), topo)
				}
			}
			conn.Close()
		}, nil
	default:
		b := brokermem.New(brokermem.Config{})
		fmt.Fprintln(out, "broker: memory (set STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL for a real broker)")
		return b, b, func() { b.Close() }, nil
	}
}

func openFlows(ctx context.Context, out io.Writer, postgresURL string) (saga.FlowStore, func(), error) {
	if postgresURL == "" {
		fmt.Fprintln(out, "flow store: memory (set STEADFAST_POSTGRES_URL for PostgreSQL)")
		return sagamem.NewFlows(), func() {}, nil
	}
	pool, err := pgxpool.New(ctx, postgresURL)
	if err != nil {
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	if err := sagapg.MigrateFlows(ctx, pool, "example_flow"); err != nil {
		pool.Close()
		return nil, nil, err
	}
	flows, err := sagapg.NewFlows(pool, sagapg.FlowsConfig{Table: "example_flow"})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	fmt.Fprintln(out, "flow store: postgres")
	return flows, pool.Close, nil
}

func run(ctx context.Context, out io.Writer, be backends) error {
	quiet := slog.New(slog.DiscardHandler)
	runID := broker.NewID()[24:] // keeps reruns apart
	prefix := "shop-" + runID + "."
	pub, sub, closeBroker, err := openBroker(ctx, out, be, prefix)
	if err != nil {
		return err
	}
	defer closeBroker()
	flows, closeFlows, err := openFlows(ctx, out, be.postgresURL)
	if err != nil {
		return err
	}
	defer closeFlows()
	tracker, err := saga.NewTracker(flows, saga.TrackerConfig{Flows: []saga.FlowSpec{orderFlow}, Logger: quiet})
	if err != nil {
		return err
	}

	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	subErrs := make(chan error, 2*len(reactions)+8)
	defer wg.Wait()
	defer stopAll()
	subscribe := func(ctx context.Context, topic, group string, h broker.Handler) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sub.Subscribe(ctx, broker.Subscription{Topic: prefix + topic, Group: group}, h); err != nil {
				subErrs <- fmt.Errorf("subscribe %s/%s: %w", topic, group, err)
			}
		}()
	}

	// What each service did, per order, for the story.
	var (
		mu    sync.Mutex
		story = map[string][]string{}
	)
	// Each service deduplicates its input on the message ID.
	dedupStore, err := idemmem.New(idemmem.Config{})
	if err != nil {
		return err
	}
	dedup, err := idempotency.Consumer(dedupStore, idempotency.ConsumerConfig{Logger: quiet})
	if err != nil {
		return err
	}
	handler := func(r reaction) broker.Handler {
		c := saga.Choreography{Service: r.service}
		return dedup(func(ctx context.Context, d broker.Delivery) error {
			if d.Header(broker.HeaderType) != r.on {
				return nil // another service's business
			}
			var o Order
			if err := json.Unmarshal(d.Payload, &o); err != nil {
				return err
			}
			topic, typ, what := r.react(o)
			next := c.Next(ctx, d.Message, prefix+topic, typ, d.Payload)
			line := fmt.Sprintf("%-10s %s -> %s", r.service+":", what, typ)
			mu.Lock()
			story[o.ID] = append(story[o.ID], line) // before the publish, which may end the flow
			mu.Unlock()
			if err := pub.Publish(ctx, next); err != nil {
				mu.Lock()
				story[o.ID] = story[o.ID][:len(story[o.ID])-1]
				mu.Unlock()
				return err // not acknowledged: redelivered
			}
			return nil
		})
	}
	// Each service consumes in a group named after it (one reaction per
	// service and topic here). The shipping service can be stopped.
	shippingCtx, stopShipping := context.WithCancel(runCtx)
	defer stopShipping()
	for _, r := range reactions {
		c := runCtx
		if r.service == "shipping" {
			c = shippingCtx
		}
		subscribe(c, r.from, r.service, handler(r))
	}
	for t := range groups() {
		subscribe(runCtx, t, "tracker", tracker.Handle)
	}

	orders := []Order{
		{ID: "order-1", Item: "book", Amount: 40},
		{ID: "order-2", Item: "piano", Amount: 4800},
		{ID: "order-3", Item: "lamp", Amount: 75},
	}
	place := func(o Order) (string, error) {
		payload, err := json.Marshal(o)
		if err != nil {
			return "", err
		}
		placed := saga.Choreography{Service: "orders"}.Begin(ctx, prefix+"orders", "order.placed", payload)
		mu.Lock()
		story[o.ID] = append(story[o.ID], "orders:    placed -> order.placed")
		mu.Unlock()
		if err := pub.Publish(ctx, placed); err != nil {
			return "", err
		}
		return placed.ID, nil // the flow's correlation-id
	}
	tell := func(o Order, flow saga.FlowTimeline) {
		mu.Lock()
		for _, s := range story[o.ID] {
			fmt.Fprintf(out, "%s:   %s\n", o.ID, s)
		}
		mu.Unlock()
		fmt.Fprintf(out, "%s: tracker: %s after %d events: %s\n", o.ID, status(flow.Flow), len(flow.Events), chain(flow))
	}

	// order-1 and order-2 run with every service up.
	for _, o := range orders[:2] {
		corr, err := place(o)
		if err != nil {
			return err
		}
		flow, err := waitFlow(ctx, tracker, corr, complete, subErrs)
		if err != nil {
			return fmt.Errorf("%s: %w", o.ID, err)
		}
		tell(o, flow)
	}

	// order-3 is placed while the shipping service is down.
	stopShipping()
	fmt.Fprintln(out, "-- the shipping service goes down")
	o3 := orders[2]
	corr, err := place(o3)
	if err != nil {
		return err
	}
	stuck, err := waitStuck(ctx, tracker, corr, subErrs)
	if err != nil {
		return fmt.Errorf("order-3: %w", err)
	}
	fmt.Fprintf(out, "order-3: tracker: stuck past its %s deadline after %s from %s (%d events)\n",
		orderFlow.Deadline, stuck.LastType, stuck.LastSource, stuck.Events)
	fmt.Fprintln(out, "-- the shipping service is back")
	subscribe(runCtx, "payment", "shipping", handler(reactions[2]))
	flow, err := waitFlow(ctx, tracker, corr, complete, subErrs)
	if err != nil {
		return fmt.Errorf("order-3: %w", err)
	}
	tell(o3, flow)
	left, err := tracker.Stuck(ctx, 10)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "stuck flows now: %d\n", countFlows(left, corr))
	return nil
}

// countFlows counts the summaries of the flow with correlation ID corr (a
// shared flow store may hold other runs' flows).
func countFlows(fs []saga.FlowSummary, corr string) int {
	n := 0
	for _, f := range fs {
		if f.CorrelationID == corr {
			n++
		}
	}
	return n
}

func status(f saga.FlowSummary) string {
	if f.Done {
		return "done"
	}
	return "not done"
}

// chain follows the causation-ids from the flow's first event: the order
// of cause and effect, whatever the clocks and the order of recording.
func chain(ft saga.FlowTimeline) string {
	next := map[string][]saga.FlowEvent{}
	for _, e := range ft.Events {
		next[e.CausationID] = append(next[e.CausationID], e)
	}
	var parts []string
	for cur := ft.Flow.CorrelationID; ; {
		var found *saga.FlowEvent
		for _, e := range ft.Events {
			if e.MessageID == cur {
				found = &e
				break
			}
		}
		if found == nil {
			break
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", found.Type, found.Source))
		effects := next[found.MessageID]
		if len(effects) == 0 {
			break
		}
		sort.Slice(effects, func(i, j int) bool { return effects[i].Type < effects[j].Type })
		cur = effects[0].MessageID
	}
	return strings.Join(parts, " -> ")
}

// complete reports whether the tracker has the whole flow: a terminal
// event, and every event between it and the first. (The tracker consumes
// several topics at once, so the terminal event can be recorded before an
// event that caused it.)
func complete(ft saga.FlowTimeline) bool {
	if !ft.Flow.Done {
		return false
	}
	c := chain(ft)
	for _, t := range orderFlow.Terminal {
		if strings.HasSuffix(c, " -> "+t+" ("+sourceOf(ft, t)+")") {
			return true
		}
	}
	return false
}

func sourceOf(ft saga.FlowTimeline, eventType string) string {
	for _, e := range ft.Events {
		if e.Type == eventType {
			return e.Source
		}
	}
	return ""
}

// waitFlow polls the tracker until the flow satisfies cond.
func waitFlow(ctx context.Context, t *saga.Tracker, corr string, cond func(saga.FlowTimeline) bool, subErrs <-chan error) (saga.FlowTimeline, error) {
	for {
		f, err := t.Flow(ctx, corr)
		if err == nil && cond(f) {
			return f, nil
		}
		select {
		case <-ctx.Done():
			return f, fmt.Errorf("waiting for the flow (last error %v, %d events): %w", err, len(f.Events), ctx.Err())
		case err := <-subErrs:
			return f, err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitStuck polls the tracker until it reports the flow as stuck.
func waitStuck(ctx context.Context, t *saga.Tracker, corr string, subErrs <-chan error) (saga.FlowSummary, error) {
	for {
		stuck, err := t.Stuck(ctx, 100)
		if err != nil {
			return saga.FlowSummary{}, err
		}
		for _, f := range stuck {
			if f.CorrelationID == corr && f.LastType == "payment.charged" && f.Events == 3 {
				return f, nil
			}
		}
		select {
		case <-ctx.Done():
			return saga.FlowSummary{}, fmt.Errorf("waiting for the tracker to report the flow stuck: %w", ctx.Err())
		case err := <-subErrs:
			return saga.FlowSummary{}, err
		case <-time.After(20 * time.Millisecond):
		}
	}
}
