// Command saga-orchestration runs the order flow as an orchestrated saga:
// reserve inventory -> charge payment -> ship, with three participant
// services answering the engine's commands. The payment service refuses
// any order over 1000 (a declined card), so that order's saga compensates:
// the inventory reserved for it is released, and nothing is shipped.
//
// What it shows, and the guarantees behind it:
//
//   - every transition (the instance's new state, its history and the
//     commands it sends) commits as one store transaction, so a crash
//     leaves the saga where its last commit put it;
//   - charge-payment is the pivot: before it succeeded a failure
//     compensates the completed steps in reverse order; after it the saga
//     only moves forward (ship is retriable);
//   - each participant performs an action (and its compensation) exactly
//     once in its own store, however often the command is delivered;
//   - starting a saga is idempotent on its ID.
//
// It runs with no infrastructure, on the memory broker and the memory saga
// stores (saga/memory):
//
//	go run ./examples/saga-orchestration
//
// and on PostgreSQL (saga/postgres, with the transactional outbox and a
// relay publishing the commands and replies; it creates example_saga*,
// example_saga_participant and example_saga_outbox) when
// STEADFAST_POSTGRES_URL is set, with the commands and replies on Kafka or
// RabbitMQ when STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL is set:
//
//	make services && . .services/env && go run ./examples/saga-orchestration
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
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// backends says which servers to use; empty fields mean "in process".
type backends struct {
	postgresURL  string // STEADFAST_POSTGRES_URL
	kafkaBrokers string // STEADFAST_KAFKA_BROKERS
	rabbitmqURL  string // STEADFAST_RABBITMQ_URL
}

func backendsFromEnv() backends {
	return backends{
		postgresURL:  os.Getenv("STEADFAST_POSTGRES_URL"),
		kafkaBrokers: os.Getenv("STEADFAST_KAFKA_BROKERS"),
		rabbitmqURL:  os.Getenv("STEADFAST_RABBITMQ_URL"),
	}
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, backendsFromEnv()); err != nil {
		log.Fatal(err)
	}
}

// Order is the saga's data.
type Order struct {
	ID        string `json:"id"`
	Item      string `json:"item"`
	Amount    int    `json:"amount"`
	PaymentID string `json:"payment_id,omitempty"`
}

// The payment service's rule, so the output is the same on every run.
const maxAmount = 1000

// command sends the order as JSON to a participant's topic.
func command(topic string) func(context.Context, *Order) (broker.Message, error) {
	return func(_ context.Context, o *Order) (broker.Message, error) {
		b, err := json.Marshal(o)
		return broker.Message{Topic: topic, Payload: b}, err
	}
}

// definition is the order flow; the participants' topics start with
// prefix.
func definition(prefix string) (*saga.Definition[Order], error) {
	return saga.Define("order-fulfilment", 1,
		saga.Step[Order]{Name: "reserve-inventory", Command: command(prefix + "inventory"), CompensationCommand: command(prefix + "inventory")},
		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: command(prefix + "payment"),
			OnReply: func(_ context.Context, o *Order, r saga.Reply) error { return r.Decode(&o.PaymentID) }},
		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: command(prefix + "shipping")},
	)
}

// openBroker picks Kafka, RabbitMQ or the memory broker, and prepares the
// topics and their groups so that nothing published before a group
// subscribes is lost.
func openBroker(ctx context.Context, out io.Writer, be backends, topics map[string]string) (broker.Publisher, broker.Subscriber, func(), error) {
	switch {
	case be.kafkaBrokers != "":
		cfg := kafka.Config{Brokers: kafka.ParseBrokers(be.kafkaBrokers), ClientID: "example-saga-orchestration"}
		admin, err := kafka.NewAdmin(cfg)
		if err != nil {
			return nil, nil, nil, err
		}
		defer admin.Close()
		for t := range topics {
			if err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: t, Partitions: 3}); err != nil && !errors.Is(err, kafka.ErrTopicExists) {
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
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: be.rabbitmqURL, Name: "example-saga-orchestration"})
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
		for t, g := range topics {
			if err := sub.Setup(ctx, t, g); err != nil {
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
			for t, g := range topics { // remove this run's exchanges and queues
				if topo, err := sub.Topology(t, g); err == nil {
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

// stores are the saga store and the participants' store of one backend.
type stores struct {
	name  string
	saga  saga.Store
	parts saga.ParticipantStore
	close func()
}

func openStores(ctx context.Context, b broker.Publisher, postgresURL string) (*stores, error) {
	quiet := slog.New(slog.DiscardHandler)
	if postgresURL == "" {
		store, err := sagamem.New(sagamem.Config{Publisher: b, Logger: quiet})
		if err != nil {
			return nil, err
		}
		parts, err := sagamem.NewParticipants(sagamem.Config{Publisher: b, Logger: quiet})
		if err != nil {
			store.Close()
			return nil, err
		}
		return &stores{name: "memory", saga: store, parts: parts, close: func() { parts.Close(); store.Close() }}, nil
	}
	pool, err := pgxpool.New(ctx, postgresURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	fail := func(err error) (*stores, error) { pool.Close(); return nil, err }
	// Commands and replies leave through the outbox, in the transactions
	// of the transitions and of the participants; a relay publishes them.
	ob, err := outboxpg.New(pool, outboxpg.Config{Table: "example_saga_outbox"})
	if err != nil {
		return fail(err)
	}
	store, err := sagapg.New(pool, sagapg.Config{Table: "example_saga", Outbox: ob})
	if err != nil {
		return fail(err)
	}
	parts, err := sagapg.NewParticipants(pool, sagapg.ParticipantsConfig{Table: "example_saga_participant", Outbox: ob})
	if err != nil {
		return fail(err)
	}
	for _, migrate := range []func(context.Context) error{
		ob.Migrate, store.Migrate,
		func(ctx context.Context) error {
			return sagapg.MigrateParticipants(ctx, pool, "example_saga_participant")
		},
	} {
		if err := migrate(ctx); err != nil {
			return fail(err)
		}
	}
	relay, err := outbox.NewRelay(ob, b, outbox.Config{Logger: quiet, PollInterval: 20 * time.Millisecond})
	if err != nil {
		return fail(err)
	}
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); _ = relay.Run(relayCtx) }()
	return &stores{name: "postgres", saga: store, parts: parts, close: func() {
		stopRelay()
		<-relayDone
		pool.Close()
	}}, nil
}

func run(ctx context.Context, out io.Writer, be backends) error {
	quiet := slog.New(slog.DiscardHandler)
	runID := broker.NewID()[24:] // keeps reruns on one database or broker apart
	prefix := "shop-" + runID + "."
	replies := prefix + "saga-replies"
	pub, sub, closeBroker, err := openBroker(ctx, out, be, map[string]string{
		prefix + "inventory": "inventory", prefix + "payment": "payment", prefix + "shipping": "shipping",
		replies: saga.DefaultGroup,
	})
	if err != nil {
		return err
	}
	defer closeBroker()
	st, err := openStores(ctx, pub, be.postgresURL)
	if err != nil {
		return err
	}
	defer st.close()
	if st.name == "memory" {
		fmt.Fprintln(out, "saga store: memory (set STEADFAST_POSTGRES_URL for PostgreSQL)")
	} else {
		fmt.Fprintln(out, "saga store: postgres, commands and replies through the outbox")
	}

	def, err := definition(prefix)
	if err != nil {
		return err
	}
	eng, err := saga.NewEngine(st.saga, saga.Config{Subscriber: sub, ReplyTopic: replies, Logger: quiet, PollInterval: 50 * time.Millisecond})
	if err != nil {
		return err
	}
	if err := eng.Register(def); err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Add(1)
	failed := make(chan error, 8) // the engine's and the participants' failures
	go func() {
		defer wg.Done()
		if err := eng.Run(runCtx); err != nil {
			failed <- fmt.Errorf("engine: %w", err)
		}
	}()

	// The participant services. What they did, per order, for the story.
	var (
		mu      sync.Mutex
		story   = map[string][]string{}
		label   = func(id string) string { return strings.TrimSuffix(id, "-"+runID) }
		tell    = func(id, s string) { mu.Lock(); story[id] = append(story[id], s); mu.Unlock() }
		decoded = func(c saga.Command) (Order, error) {
			var o Order
			if err := c.Decode(&o); err != nil {
				return o, saga.Refuse(err) // a command that does not parse is refused, not retried
			}
			return o, nil
		}
	)
	services := map[string]saga.ParticipantConfig{
		"inventory": {
			Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decoded(c)
				if err != nil {
					return nil, err
				}
				tell(c.SagaID, "inventory: reserved 1 "+o.Item)
				return nil, nil
			},
			Compensation: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
				o, err := decoded(c)
				if err != nil {
					return nil, err
				}
				tell(c.SagaID, "inventory: released 1 "+o.Item+" (compensation)")
				return nil, nil
			},
		},
		"payment": {Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
			o, err := decoded(c)
			if err != nil {
				return nil, err
			}
			if o.Amount > maxAmount {
				tell(c.SagaID, fmt.Sprintf("payment: refused %d (card declined)", o.Amount))
				return nil, saga.Refusef("card declined for %d", o.Amount)
			}
			tell(c.SagaID, fmt.Sprintf("payment: charged %d", o.Amount))
			return json.Marshal("pay-" + label(o.ID))
		}},
		"shipping": {Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
			o, err := decoded(c)
			if err != nil {
				return nil, err
			}
			tell(c.SagaID, "shipping: shipped "+o.Item)
			return nil, nil
		}},
	}
	for name, cfg := range services {
		cfg.Name = name
		cfg.Logger = quiet
		p, err := saga.NewParticipant(st.parts, cfg)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sub.Subscribe(runCtx, broker.Subscription{Topic: prefix + name, Group: name}, p.Handle); err != nil {
				failed <- fmt.Errorf("participant %s: %w", name, err)
			}
		}()
	}

	orders := []Order{
		{ID: "order-1", Item: "book", Amount: 40},
		{ID: "order-2", Item: "piano", Amount: 4800},
		{ID: "order-3", Item: "lamp", Amount: 75},
	}
	for _, o := range orders {
		label := o.ID
		o.ID += "-" + runID
		created, err := saga.Start(ctx, eng, def, o.ID, o)
		if err != nil {
			return err
		}
		if o.ID == orders[0].ID+"-"+runID { // a client retrying its request
			again, err := saga.Start(ctx, eng, def, o.ID, o)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s: started (created %t), started again (created %t): one instance\n", label, created, again)
		}
		in, err := waitFinished(ctx, st.saga, o.ID, failed)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		var got Order
		if err := json.Unmarshal(in.Data, &got); err != nil {
			return err
		}
		mu.Lock()
		for _, s := range story[o.ID] {
			fmt.Fprintf(out, "%s:   %s\n", label, s)
		}
		mu.Unlock()
		line := fmt.Sprintf("%s: %s", label, in.Status)
		if got.PaymentID != "" {
			line += ", payment " + got.PaymentID
		}
		if in.Failure != "" {
			line += ": " + in.Failure
		}
		fmt.Fprintln(out, line)
		if in.Status == saga.StatusCompensated {
			// The instance's durable history, as an operator reads it.
			tl, err := saga.LoadTimeline(ctx, st.saga, o.ID)
			if err != nil {
				return err
			}
			for _, s := range tl.Steps() {
				fmt.Fprintf(out, "%s:   history: %-17s attempts %d, done %t, failed %t, compensated %t\n",
					label, s.Step, s.Attempts, s.Done, s.Failed, s.Compensated)
			}
		}
	}
	return nil
}

// waitFinished polls the store until the instance has finished.
func waitFinished(ctx context.Context, store saga.Store, id string, failed <-chan error) (saga.Instance, error) {
	for {
		in, err := store.Get(ctx, id)
		if err == nil && in.Status.Finished() {
			return in, nil
		}
		select {
		case <-ctx.Done():
			return in, fmt.Errorf("waiting for the saga to finish (status %q, last error %v): %w", in.Status, err, ctx.Err())
		case err := <-failed:
			return in, err
		case <-time.After(10 * time.Millisecond):
		}
	}
}
