// Command idempotency shows idempotent consumers and an idempotent HTTP
// endpoint, and the difference between the two ways of deduplicating a
// consumer:
//
//   - idempotency.Consumer, the middleware over any idempotency.Store
//     (memory, Redis, Postgres), drops duplicates of a message that was
//     handled, but the handler's effect happens outside the store, so it is
//     AT LEAST ONCE: a handler that acted and then failed (or a process that
//     died before marking the key) acts again on the redelivery;
//   - idempotency/postgres Store.Handler claims the message's key inside the
//     transaction that writes the effect, so the effect and the claim commit
//     or roll back together: EXACTLY ONCE in Postgres terms;
//   - idempotency.HTTP, net/http middleware for the Idempotency-Key header:
//     a retried request gets the stored response instead of a second order.
//
// It runs with no infrastructure, on the in-process memory broker and the
// memory store:
//
//	go run ./examples/idempotency
//
// On real backends it uses Redis for the middleware and the endpoint
// (STEADFAST_REDIS_URL), Postgres for Store.Handler
// (STEADFAST_POSTGRES_URL; it creates example_idempotency and
// example_charges; without it the exactly-once part is skipped), and Kafka
// or RabbitMQ as the broker (STEADFAST_KAFKA_BROKERS,
// STEADFAST_RABBITMQ_URL):
//
//	make services && . .services/env && go run ./examples/idempotency
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/idempotency"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
)

// backends says which real servers to use; empty fields mean "in process".
type backends struct {
	postgresURL  string // STEADFAST_POSTGRES_URL
	redisURL     string // STEADFAST_REDIS_URL
	redisPrefix  string // starts every Redis key; default "steadfast:example:"
	kafkaBrokers string // STEADFAST_KAFKA_BROKERS
	rabbitmqURL  string // STEADFAST_RABBITMQ_URL
}

func backendsFromEnv() backends {
	return backends{
		postgresURL:  os.Getenv("STEADFAST_POSTGRES_URL"),
		redisURL:     os.Getenv("STEADFAST_REDIS_URL"),
		kafkaBrokers: os.Getenv("STEADFAST_KAFKA_BROKERS"),
		rabbitmqURL:  os.Getenv("STEADFAST_RABBITMQ_URL"),
	}
}

// openBroker picks Kafka, RabbitMQ or the memory broker, and prepares the
// topics and their groups so that nothing published before a group
// subscribes is lost.
func openBroker(ctx context.Context, out io.Writer, be backends, topics map[string]string) (broker.Publisher, broker.Subscriber, func(), error) {
	backoff := broker.Backoff{Initial: time.Millisecond, Jitter: -1} // quick redeliveries for the example
	switch {
	case be.kafkaBrokers != "":
		cfg := kafka.Config{Brokers: kafka.ParseBrokers(be.kafkaBrokers), ClientID: "example-idempotency"}
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
		sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: cfg, RetryBackoff: backoff})
		if err != nil {
			pub.Close()
			return nil, nil, nil, err
		}
		fmt.Fprintln(out, "broker: kafka")
		return pub, sub, func() { sub.Close(); pub.Close() }, nil
	case be.rabbitmqURL != "":
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: be.rabbitmqURL, Name: "example-idempotency"})
		if err != nil {
			return nil, nil, nil, err
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
		if err != nil {
			conn.Close()
			return nil, nil, nil, err
		}
		sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{RetryBackoff: backoff})
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
		b := brokermem.New(brokermem.Config{RedeliveryBackoff: backoff})
		fmt.Fprintln(out, "broker: memory (set STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL for a real broker)")
		return b, b, func() { b.Close() }, nil
	}
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, backendsFromEnv()); err != nil {
		log.Fatal(err)
	}
}

// errAfterCharge stands for a handler that did its work and then failed
// before returning (a timeout talking to the next system, or a crash: a
// process that dies there does the same).
var errAfterCharge = errors.New("connection reset after charging")

func run(ctx context.Context, out io.Writer, be backends) error {
	quiet := slog.New(slog.DiscardHandler)
	runID := broker.NewID()[24:] // keeps reruns apart

	// The store behind the middleware and the HTTP endpoint.
	var store idempotency.Store
	if be.redisURL != "" {
		opts, err := goredis.ParseURL(be.redisURL)
		if err != nil {
			return fmt.Errorf("STEADFAST_REDIS_URL: %w", err)
		}
		rdb := goredis.NewClient(opts)
		defer rdb.Close()
		prefix := cmp.Or(be.redisPrefix, "steadfast:example:") + runID + ":"
		s, err := idemredis.New(rdb, idemredis.Config{Prefix: prefix, Retention: time.Hour})
		if err != nil {
			return err
		}
		store = s
		fmt.Fprintln(out, "dedup store: redis")
	} else {
		s, err := idemmem.New(idemmem.Config{})
		if err != nil {
			return err
		}
		store = s
		fmt.Fprintln(out, "dedup store: memory (set STEADFAST_REDIS_URL for Redis)")
	}

	topic := "payments-" + runID
	ledgerTopic := "ledger-" + runID
	pub, sub, closeBroker, err := openBroker(ctx, out, be, map[string]string{topic: "billing", ledgerTopic: "ledger"})
	if err != nil {
		return err
	}
	defer closeBroker()
	b := &bus{pub, sub}

	// The producer retried order-1 twice (same message ID each time), and
	// order-2's handler fails once after charging.
	o1 := broker.NewMessage(topic, []byte("order-1"))
	o1.Key = "order-1"
	o2 := broker.NewMessage(topic, []byte("order-2"))
	o2.Key = "order-2"
	msgs := []broker.Message{o1, o1, o1, o2}

	// 1. The middleware: duplicates dropped, effect at least once.
	fmt.Fprintln(out, "-- consumer middleware (idempotency.Consumer): at-least-once effect, duplicates dropped")
	var (
		mu      sync.Mutex
		charges = map[string]int{}
		dups    = map[string]int{}
	)
	dedup, err := idempotency.Consumer(store, idempotency.ConsumerConfig{
		Logger: quiet,
		OnDuplicate: func(_ context.Context, d broker.Delivery) {
			mu.Lock()
			dups[d.Key]++
			mu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	charge := func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		charges[d.Key]++ // the effect: outside the store
		mu.Unlock()
		if d.Key == "order-2" && d.Attempt == 1 {
			return errAfterCharge
		}
		return nil
	}
	if err := consume(ctx, b, topic, "billing", msgs, dedup(charge), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return dups["order-1"] == 2 && charges["order-1"] == 1 && charges["order-2"] == 2
	}); err != nil {
		return err
	}
	for _, o := range []string{"order-1", "order-2"} {
		fmt.Fprintf(out, "%s: %d deliveries dropped as duplicates, card charged %d time(s)\n", o, dups[o], charges[o])
	}
	fmt.Fprintln(out, "order-2 was charged twice: the handler failed after charging, so the key was released and the redelivery charged again")

	// 2. Store.Handler: the claim and the effect in one transaction.
	fmt.Fprintln(out, "-- postgres Store.Handler: claim and effect in one transaction, exactly-once effect")
	if be.postgresURL == "" {
		fmt.Fprintln(out, "skipped: set STEADFAST_POSTGRES_URL to run it")
	} else if err := exactlyOnce(ctx, out, b, be.postgresURL, ledgerTopic, msgs, runID); err != nil {
		return err
	}

	// 3. The HTTP endpoint.
	fmt.Fprintln(out, "-- HTTP endpoint with the Idempotency-Key middleware")
	return endpoint(ctx, out, store, quiet)
}

// bus is a publisher and a subscriber of one broker.
type bus struct {
	broker.Publisher
	broker.Subscriber
}

// consume publishes msgs to topic and runs h for group until done reports
// that every message was handled.
func consume(ctx context.Context, b *bus, topic, group string, msgs []broker.Message, h broker.Handler, done func() bool) error {
	if err := b.Publish(ctx, msgs...); err != nil {
		return err
	}
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	subDone := make(chan error, 1)
	go func() {
		subDone <- b.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: group, Concurrency: 1}, h)
	}()
	err := waitFor(ctx, func() bool {
		select {
		case err := <-subDone: // the subscription failed
			subDone <- err
			return true
		default:
			return done()
		}
	})
	stop()
	if serr := <-subDone; serr != nil {
		return fmt.Errorf("subscribe %s: %w", group, serr)
	}
	if err != nil {
		return fmt.Errorf("waiting for %s: %w", group, err)
	}
	return nil
}

func exactlyOnce(ctx context.Context, out io.Writer, b *bus, url, topic string, msgs []broker.Message, runID string) error {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS example_charges (
		id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, run text NOT NULL, order_id text NOT NULL)`); err != nil {
		return fmt.Errorf("create example_charges: %w", err)
	}
	store, err := idempg.New(pool, idempg.Config{Table: "example_idempotency"})
	if err != nil {
		return err
	}
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		dups = map[string]int{}
	)
	h, err := store.Handler(idempotency.ConsumerConfig{
		Consumer: "ledger",
		Logger:   slog.New(slog.DiscardHandler),
		OnDuplicate: func(_ context.Context, d broker.Delivery) {
			mu.Lock()
			dups[d.Key]++
			mu.Unlock()
		},
	}, func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
		// The effect is a row written through tx, the claim's transaction.
		if _, err := tx.Exec(ctx, `INSERT INTO example_charges (run, order_id) VALUES ($1, $2)`, runID, d.Key); err != nil {
			return err
		}
		if d.Key == "order-2" && d.Attempt == 1 {
			return errAfterCharge // rolls back the row and the claim
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The same messages (same IDs), on a topic of the ledger's own.
	ledger := make([]broker.Message, len(msgs))
	for i, m := range msgs {
		m.Topic = topic
		ledger[i] = m
	}
	rows := func(order string) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM example_charges WHERE run = $1 AND order_id = $2`, runID, order).Scan(&n); err != nil {
			return -1
		}
		return n
	}
	if err := consume(ctx, b, topic, "ledger", ledger, h, func() bool {
		mu.Lock()
		d := dups["order-1"]
		mu.Unlock()
		return d == 2 && rows("order-1") == 1 && rows("order-2") == 1
	}); err != nil {
		return err
	}
	for _, o := range []string{"order-1", "order-2"} {
		fmt.Fprintf(out, "%s: %d deliveries dropped as duplicates, %d charge row(s)\n", o, dups[o], rows(o))
	}
	fmt.Fprintln(out, "order-2 has one row: its failed attempt rolled back the row and the claim together")
	return nil
}

func endpoint(ctx context.Context, out io.Writer, store idempotency.Store, logger *slog.Logger) error {
	mw, err := idempotency.HTTP(store, idempotency.HTTPConfig{Required: true, Logger: logger})
	if err != nil {
		return err
	}
	var (
		mu     sync.Mutex
		orders int
	)
	srv := httptest.NewServer(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		orders++
		n := orders
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "order %d created", n)
	})))
	defer srv.Close()

	post := func(what, key, body string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/orders", strings.NewReader(body))
		if err != nil {
			return err
		}
		if key != "" {
			req.Header.Set(idempotency.HeaderIdempotencyKey, key)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%-34s -> %d", what, resp.StatusCode)
		if resp.StatusCode < 400 {
			line += fmt.Sprintf(" %q", b)
		}
		if resp.Header.Get(idempotency.HeaderReplayed) == "true" {
			line += " (replayed)"
		}
		fmt.Fprintln(out, line)
		return nil
	}
	key := "checkout-" + broker.NewID()
	for _, p := range []struct{ what, key, body string }{
		{"POST /orders, key K", key, "2 books"},
		{"POST /orders, key K again (retry)", key, "2 books"},
		{"POST /orders, key K, other body", key, "3 books"},
		{"POST /orders, no key", "", "2 books"},
	} {
		if err := post(p.what, p.key, p.body); err != nil {
			return err
		}
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "orders created by the handler: %d\n", orders)
	return nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
