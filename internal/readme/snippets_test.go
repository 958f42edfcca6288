package readme_test

// The README's code, in functions whose parameters are the snippets' free
// variables. Keep the lines as the README has them: TestREADME compares.

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/cqrs"
	cqrspg "github.com/steadfast-go/steadfast/cqrs/postgres"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/eventsource"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/idempotency"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

func bill(context.Context, []byte) error { return nil }

func snippetBroker(ctx context.Context) error {
	b := brokermem.New(brokermem.Config{}) // or kafka.NewPublisher/NewSubscriber, rabbitmq.New...

	m := broker.NewMessage("orders", []byte(`{"id":"order-1"}`)) // UUIDv7 ID, current time
	m.Key = "customer-7"                                         // per-key order everywhere
	err := b.Publish(ctx, m)                                     // returns once the broker durably accepted it

	err = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"},
		func(ctx context.Context, d broker.Delivery) error {
			return bill(ctx, d.Payload) // nil acks; an error redelivers with d.Attempt+1
		})
	return err
}

func snippetOutbox(ctx context.Context, pool *pgxpool.Pool, publisher broker.Publisher, subscriber broker.Subscriber) error {
	out, err := outboxpg.New(pool, outboxpg.Config{}) // table "outbox"
	err = out.Migrate(ctx)                            // or apply outboxpg.Schema with your migration tool

	// In the request: the order and its event commit together, or neither does.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id) VALUES ($1)`, "order-7"); err != nil {
			return err
		}
		m := broker.NewMessage("orders", []byte(`{"id":"order-7"}`))
		m.Key = "order-7"
		return out.Enqueue(ctx, tx, m)
	})

	// In the background, in as many processes as you like: publish what committed.
	relay, err := outbox.NewRelay(out, publisher, outbox.Config{})
	go relay.Run(ctx)

	// The consumer: its effect and the dedup mark commit in one transaction.
	seen, err := idempg.New(pool, idempg.Config{})
	err = seen.Migrate(ctx)
	handle, err := seen.Handler(idempotency.ConsumerConfig{Consumer: "billing"},
		func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
			_, err := tx.Exec(ctx, `INSERT INTO invoices (order_id) VALUES ($1)`, d.Key)
			return err
		})
	err = subscriber.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"}, handle)
	return err
}

func snippetIdempotency(ctx context.Context, rdb *goredis.Client, subscriber broker.Subscriber, sendMail broker.Handler,
	mux *http.ServeMux, createOrder http.Handler) error {
	store, err := idemredis.New(rdb, idemredis.Config{}) // or idempg.New(pool, ...), idemmem.New(...)

	// A consumer that skips messages it has handled.
	dedup, err := idempotency.Consumer(store, idempotency.ConsumerConfig{})
	err = subscriber.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "mailer"},
		broker.Chain(sendMail, dedup))

	// An endpoint that runs once per Idempotency-Key and replays the stored response.
	mw, err := idempotency.HTTP(store, idempotency.HTTPConfig{Required: true})
	mux.Handle("POST /orders", mw(createOrder))
	return err
}

type Order struct {
	ID     string
	Amount int
}

func charge(context.Context, Order) error { return nil }

func snippetDLQ(ctx context.Context, publisher broker.Publisher, subscriber broker.Subscriber) error {
	consumer, err := dlq.New(dlq.Config{
		Publisher: publisher, Subscriber: subscriber, Name: "billing.charge",
		Policy: dlq.Policy{MaxAttempts: 5}, // with broker.Backoff between attempts
	})
	err = consumer.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"},
		func(ctx context.Context, d broker.Delivery) error {
			var o Order
			if err := json.Unmarshal(d.Payload, &o); err != nil {
				return dlq.Permanent(err) // to orders.billing.dlq at once
			}
			return charge(ctx, o) // retried, then dead-lettered with the failure envelope
		})
	return err
}

type (
	Deposited struct{ Amount int }
	Deposit   struct{ Amount int }
	Account   struct{ Balance int }
)

var account = eventsource.Decider[Account, any, any]{
	Decide: func(_ Account, cmd any) ([]any, error) { return []any{Deposited(cmd.(Deposit))}, nil },
	Evolve: func(a Account, e any) Account { a.Balance += e.(Deposited).Amount; return a },
}

func snippetEventStore(ctx context.Context, pool *pgxpool.Pool, out *outboxpg.Store) error {
	reg := eventsource.NewRegistry()
	eventsource.Register[Deposited](reg, "account.deposited", 1) // stable name, schema version

	events, err := espg.New(pool, espg.Config{Outbox: out}) // or esmem.New(); Outbox: events also go out
	err = events.Migrate(ctx)
	accounts, err := eventsource.NewRepository(events, reg, account, // a Decider: Decide and Evolve
		eventsource.RepositoryConfig[Account]{Snapshot: eventsource.Every(100)})
	res, err := accounts.Handle(ctx, "account-1", Deposit{Amount: 100})
	_ = res
	return err
}

func send(topic string) func(context.Context, *Order) (broker.Message, error) {
	return func(context.Context, *Order) (broker.Message, error) { return broker.Message{Topic: topic}, nil }
}

func snippetOrchestration(ctx context.Context, pool *pgxpool.Pool, out *outboxpg.Store, subscriber broker.Subscriber,
	charge saga.ParticipantFunc) error {
	def, err := saga.Define("order", 1,
		saga.Step[Order]{Name: "reserve-inventory", Command: send("inventory"), CompensationCommand: send("inventory")},
		saga.Step[Order]{Name: "charge-payment", Kind: saga.Pivot, Command: send("payment")},
		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: send("shipping")},
	)
	store, err := sagapg.New(pool, sagapg.Config{Outbox: out}) // or sagamem
	err = store.Migrate(ctx)
	engine, err := saga.NewEngine(store, saga.Config{Subscriber: subscriber})
	err = engine.Register(def)
	go engine.Run(ctx)
	started, err := saga.Start(ctx, engine, def, "order-7", Order{ID: "order-7", Amount: 50})

	// A participant: its action runs exactly once per command, its reply goes out through the outbox.
	parts, err := sagapg.NewParticipants(pool, sagapg.ParticipantsConfig{Outbox: out})
	payment, err := saga.NewParticipant(parts, saga.ParticipantConfig{Name: "payment", Action: charge})
	go subscriber.Subscribe(ctx, broker.Subscription{Topic: "payment", Group: "payment"}, payment.Handle)
	_ = started
	return err
}

func snippetChoreography(ctx context.Context, tx pgx.Tx, out *outboxpg.Store, placed broker.Message, payload []byte,
	flows saga.FlowStore) error {
	var err error
	inventory := saga.Choreography{Service: "inventory"}
	// The next event carries the correlation ID, causation ID and trace context.
	reserved := inventory.Next(ctx, placed, "inventory", "inventory.reserved", payload)
	err = out.Enqueue(ctx, tx, reserved) // with the reservation, in its transaction

	tracker, err := saga.NewTracker(flows, saga.TrackerConfig{Flows: []saga.FlowSpec{{
		Name: "order", Events: []string{"order.placed", "inventory.reserved", "payment.charged"},
		Terminal: []string{"order.shipped", "order.cancelled"}, Deadline: time.Minute,
	}}})
	stuck, err := tracker.Stuck(ctx, 100) // flows that stopped short of a terminal event
	_ = stuck
	return err
}

var _ = []any{snippetBroker, snippetOutbox, snippetIdempotency, snippetDLQ, snippetEventStore, snippetOrchestration, snippetChoreography}

func applyBalances(context.Context, cqrspg.Tx, *cqrs.Batch) error { return nil }

func snippetCQRS(ctx context.Context, pool *pgxpool.Pool, events *espg.Store, reg *eventsource.Registry,
	accounts *eventsource.Repository[Account, any, any]) error {
	checkpoints, err := cqrspg.New(pool, cqrspg.Config{}) // or cqrsredis.New, cqrsmem.New
	err = checkpoints.Migrate(ctx)
	balances, err := cqrs.NewProjector(checkpoints, events, reg, cqrs.Projection[cqrspg.Tx]{
		ID: cqrs.ID{Name: "balances", Version: 1}, // a new Version rebuilds blue/green, then swaps
		Handle: func(ctx context.Context, tx cqrspg.Tx, b *cqrs.Batch) error {
			return applyBalances(ctx, tx, b) // in the transaction that moves the checkpoint
		},
	}, cqrs.Config{})
	go balances.Run(ctx)

	bus := cqrs.NewBus(cqrs.Validate())
	err = cqrs.HandleCommand(bus, "account.deposit", cqrs.DeciderHandler(accounts,
		func(any) string { return "account-1" }))
	res, err := cqrs.Send[any](ctx, bus, Deposit{Amount: 100})
	err = cqrs.Wait(ctx, checkpoints, "balances", res.Position, 5*time.Second) // read your writes
	return err
}
