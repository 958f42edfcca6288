package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/idempotency"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/outbox"
	outboxmem "github.com/steadfast-go/steadfast/outbox/memory"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// The services of the system; "all" runs every one in one process.
var services = []string{"orders", "orchestrator", "inventory", "payment", "shipping", "projection"}

// Options says which services run and on what.
type Options struct {
	// Services to run; empty means all.
	Services []string
	// PostgresURL, when set, keeps orders, the outbox, sagas, participant
	// records, idempotency keys and the read model in PostgreSQL; otherwise
	// in memory.
	PostgresURL string
	// KafkaBrokers, when set, is the broker; otherwise the memory broker
	// (one process only).
	KafkaBrokers []string
	// Prefix is put before every topic and consumer group (tests share a
	// cluster).
	Prefix string
	// TracerProvider receives every component's spans. Default: the
	// OpenTelemetry global provider.
	TracerProvider trace.TracerProvider
	// Logger receives the components' logs. Default: discarded.
	Logger *slog.Logger
}

func (o Options) runs(name string) bool {
	return len(o.Services) == 0 || slices.Contains(o.Services, name)
}

// Topics and groups.
func (o Options) topic(name string) string { return o.Prefix + name }

// System is the running order flow.
type System struct {
	opts   Options
	pub    broker.Publisher
	sub    broker.Subscriber
	pool   *pgxpool.Pool
	orders *OrderService
	view   ReadModel
	store  saga.Store // for status queries in one process

	closers []func()
	wg      sync.WaitGroup
	errs    chan error
}

// Order is the saga's data and the order service's row.
type Order struct {
	ID        string `json:"id"`
	Customer  string `json:"customer"`
	Amount    int    `json:"amount"`
	PaymentID string `json:"payment_id,omitempty"`
}

// Start wires and starts the selected services. Stop them with Close.
func Start(ctx context.Context, opts Options) (*System, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &System{opts: opts, errs: make(chan error, 16)}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if len(opts.Services) > 0 && (opts.PostgresURL == "" || len(opts.KafkaBrokers) == 0) {
		return nil, errors.New("orderflow: separate services need PostgreSQL (STEADFAST_POSTGRES_URL) and Kafka (STEADFAST_KAFKA_BROKERS): memory stores and the memory broker live in one process")
	}
	if err := s.connect(ctx); err != nil {
		return nil, err
	}

	// Stores: memory by default, PostgreSQL when configured.
	var (
		sagaStore saga.Store
		parts     saga.ParticipantStore
		idem      idempotency.Store
		relays    []outbox.Store
	)
	if s.pool != nil {
		ob, err := outboxpg.New(s.pool, outboxpg.Config{})
		if err != nil {
			return nil, err
		}
		if err := migrate(ctx, s.pool, ob); err != nil {
			return nil, err
		}
		st, err := sagapg.New(s.pool, sagapg.Config{Outbox: ob})
		if err != nil {
			return nil, err
		}
		ps, err := sagapg.NewParticipants(s.pool, sagapg.ParticipantsConfig{Outbox: ob})
		if err != nil {
			return nil, err
		}
		is, err := idempg.New(s.pool, idempg.Config{})
		if err != nil {
			return nil, err
		}
		sagaStore, parts, idem = st, ps, is
		s.orders = &OrderService{pg: ob, pool: s.pool, topic: opts.topic("orders")}
		s.view = &pgView{pool: s.pool}
		relays = append(relays, ob)
	} else {
		ob, _ := outboxmem.New(outboxmem.Config{})
		st, err := sagamem.New(sagamem.Config{Publisher: s.pub, Logger: opts.Logger})
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = st.Close() })
		ps, err := sagamem.NewParticipants(sagamem.Config{Publisher: s.pub, Logger: opts.Logger})
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = ps.Close() })
		is, _ := idemmem.New(idemmem.Config{})
		sagaStore, parts, idem = st, ps, is
		s.orders = &OrderService{mem: ob, rows: map[string]Order{}, topic: opts.topic("orders")}
		s.view = newMemView()
		relays = append(relays, ob)
	}
	s.store = sagaStore
	s.orders.view = s.view

	// The outbox relay runs wherever something writes to the outbox.
	for _, store := range relays {
		relay, err := outbox.NewRelay(store, s.pub, outbox.Config{Logger: opts.Logger,
			TracerProvider: opts.TracerProvider, PollInterval: 50 * time.Millisecond, DeletePublished: true})
		if err != nil {
			return nil, err
		}
		s.goRun(ctx, "outbox relay", relay.Run)
	}

	def, err := orderSaga(opts)
	if err != nil {
		return nil, err
	}
	if opts.runs("orchestrator") {
		eng, err := saga.NewEngine(sagaStore, saga.Config{Subscriber: s.sub, ReplyTopic: opts.topic("saga.replies"),
			Group: opts.topic("saga-engine"), Logger: opts.Logger, TracerProvider: opts.TracerProvider,
			PollInterval: 100 * time.Millisecond})
		if err != nil {
			return nil, err
		}
		if err := eng.Register(def); err != nil {
			return nil, err
		}
		s.goRun(ctx, "saga engine", eng.Run)
		// Placed orders start the saga: an idempotent consumer (Start is
		// idempotent on the order ID as well).
		dedup, err := idempotency.Consumer(idem, idempotency.ConsumerConfig{Consumer: "orchestrator", Logger: opts.Logger})
		if err != nil {
			return nil, err
		}
		start := dedup(func(ctx context.Context, d broker.Delivery) error {
			var o Order
			if err := json.Unmarshal(d.Payload, &o); err != nil || o.ID == "" {
				return dlq.Permanent(fmt.Errorf("orderflow: order event %s is not an order: %v", d.ID, err))
			}
			_, err := saga.Start(ctx, eng, def, o.ID, o)
			return err
		})
		s.subscribe(ctx, "orders", "orchestrator", start)
	}
	for name, cfg := range participants() {
		if !opts.runs(name) {
			continue
		}
		cfg.Name, cfg.Logger, cfg.TracerProvider = name, opts.Logger, opts.TracerProvider
		p, err := saga.NewParticipant(parts, cfg)
		if err != nil {
			return nil, err
		}
		s.subscribe(ctx, name, name, p.Handle)
	}
	if opts.runs("projection") {
		h, err := projectionHandler(s.view, idem, opts.Logger)
		if err != nil {
			return nil, err
		}
		// One consumer group per topic: members of one Kafka group that
		// subscribe to different topics rebalance each other.
		s.subscribe(ctx, "orders", "projection", h)
		s.subscribe(ctx, "saga.replies", "projection-replies", h)
	}
	ok = true
	return s, nil
}

// orderSaga is the order flow: reserve inventory, charge the payment (the
// pivot), ship.
func orderSaga(opts Options) (*saga.Definition[Order], error) {
	command := func(topic string) func(context.Context, *Order) (broker.Message, error) {
		return func(_ context.Context, o *Order) (broker.Message, error) {
			b, err := json.Marshal(o)
			return broker.Message{Topic: opts.topic(topic), Payload: b}, err
		}
	}
	return saga.Define("order", 1,
		saga.Step[Order]{Name: "reserve", Command: command("inventory"), CompensationCommand: command("inventory")},
		saga.Step[Order]{Name: "charge", Kind: saga.Pivot, Command: command("payment"),
			OnReply: func(_ context.Context, o *Order, r saga.Reply) error { return r.Decode(&o.PaymentID) }},
		saga.Step[Order]{Name: "ship", Kind: saga.Retriable, Command: command("shipping")},
	)
}

// participants are the inventory, payment and shipping services. Each
// action and compensation takes effect once per order, however often its
// command is delivered (saga.Participant records it in its store, in the
// transaction that sends the reply).
func participants() map[string]saga.ParticipantConfig {
	ok := func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil }
	return map[string]saga.ParticipantConfig{
		"inventory": {Action: ok, Compensation: ok},
		"payment": {Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
			var o Order
			if err := c.Decode(&o); err != nil {
				return nil, saga.Refuse(err)
			}
			if o.Amount > 1000 {
				return nil, saga.Refusef("card declined for %d", o.Amount)
			}
			return json.Marshal("pay-" + o.ID)
		}},
		"shipping": {Action: ok},
	}
}

// connect opens the broker and the database.
func (s *System) connect(ctx context.Context) error {
	if s.opts.PostgresURL != "" {
		pcfg, err := pgxpool.ParseConfig(s.opts.PostgresURL)
		if err != nil {
			return fmt.Errorf("orderflow: postgres: %w", err)
		}
		// An idempotent consumer holds a connection while its handler runs,
		// and the handler (saga.Start, a participant) takes another: leave
		// room for every consumer, relay claim and listener at once.
		pcfg.MaxConns = max(pcfg.MaxConns, 40)
		pool, err := pgxpool.NewWithConfig(ctx, pcfg)
		if err != nil {
			return fmt.Errorf("orderflow: postgres: %w", err)
		}
		s.closers = append(s.closers, pool.Close)
		if err := pool.Ping(ctx); err != nil {
			return fmt.Errorf("orderflow: postgres: %w", err)
		}
		s.pool = pool
	}
	if len(s.opts.KafkaBrokers) == 0 {
		b := brokermem.New(brokermem.Config{TracerProvider: s.opts.TracerProvider})
		s.closers = append(s.closers, func() { _ = b.Close() })
		s.pub, s.sub = b, b
		return nil
	}
	cfg := kafka.Config{Brokers: s.opts.KafkaBrokers, ClientID: "orderflow", Logger: s.opts.Logger,
		TracerProvider: s.opts.TracerProvider}
	admin, err := kafka.NewAdmin(cfg)
	if err != nil {
		return err
	}
	defer admin.Close()
	for _, t := range []string{"orders", "inventory", "payment", "shipping", "saga.replies"} {
		err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: s.opts.topic(t), Partitions: 3})
		if err != nil && !errors.Is(err, kafka.ErrTopicExists) {
			return fmt.Errorf("orderflow: create topic %s: %w", s.opts.topic(t), err)
		}
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func() { _ = pub.Close() })
	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg})
	if err != nil {
		return err
	}
	s.pub, s.sub = pub, sub
	return nil
}

// subscribe consumes topic in group until the system stops.
func (s *System) subscribe(ctx context.Context, topic, group string, h broker.Handler) {
	sub := broker.Subscription{Topic: s.opts.topic(topic), Group: s.opts.topic(group)}
	s.goRun(ctx, "consumer "+group+" of "+topic, func(ctx context.Context) error { return s.sub.Subscribe(ctx, sub, h) })
}

// goRun runs fn until ctx ends; an early failure is reported by Err.
func (s *System) goRun(ctx context.Context, what string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s.closers = append(s.closers, func() { cancel(); <-done })
	s.wg.Go(func() {
		defer close(done)
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			select {
			case s.errs <- fmt.Errorf("orderflow: %s: %w", what, err):
			default:
			}
		}
	})
}

// Err reports the first component that stopped with an error.
func (s *System) Err() <-chan error { return s.errs }

// Orders is the order service.
func (s *System) Orders() *OrderService { return s.orders }

// View is the read model.
func (s *System) View() ReadModel { return s.view }

// Close stops every component, in reverse order of start.
func (s *System) Close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
	s.closers = nil
}
