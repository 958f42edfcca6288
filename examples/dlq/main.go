// Command dlq shows bounded retries and dead-lettering, then what an
// operator does with the dead letters: list them with their failure record,
// replay the one whose cause was fixed, purge the one that can never
// succeed.
//
// Four orders go to a billing consumer with a retry policy of 3 attempts:
// one is charged at once, one after a transient failure, one fails every
// attempt (the payment provider is down) and one does not decode (a
// permanent error, dead-lettered without a retry). The guarantee shown: a
// message is retried at most MaxAttempts times and then published to its
// dead-letter topic ("<topic>.<group>.dlq") before the original is
// acknowledged, so a poison message never blocks its key and nothing is
// lost; a replay goes back to the original topic with its original ID.
//
// It runs with no infrastructure, on the in-process memory broker:
//
//	go run ./examples/dlq
//
// and on Kafka (dlq/kafkadlq) or RabbitMQ (dlq/rabbitdlq) when
// STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL is set:
//
//	make services && . .services/env && go run ./examples/dlq
//
// The steadfast-dlq command (dlq/cmd/steadfast-dlq) does the operator's
// part from a shell on Kafka and RabbitMQ.
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
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
)

// backends says which broker to use; empty fields mean the memory broker.
type backends struct {
	kafkaBrokers string // STEADFAST_KAFKA_BROKERS
	rabbitmqURL  string // STEADFAST_RABBITMQ_URL
}

func backendsFromEnv() backends {
	return backends{kafkaBrokers: os.Getenv("STEADFAST_KAFKA_BROKERS"), rabbitmqURL: os.Getenv("STEADFAST_RABBITMQ_URL")}
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, backendsFromEnv()); err != nil {
		log.Fatal(err)
	}
}

// consumer is what the three brokers' dead-letter consumers have in common.
type consumer interface {
	Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error
}

// setup is one broker's consumer, publisher and inspector for topic and
// group.
type setup struct {
	name      string
	pub       broker.Publisher
	consumer  consumer
	inspector dlq.Inspector
	close     func()
}

// The policy: 3 attempts, short waits so the example is quick.
var policy = dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: 5 * time.Millisecond, Jitter: -1}}

func open(ctx context.Context, be backends, topic, group string) (*setup, error) {
	quiet := slog.New(slog.DiscardHandler)
	cfg := dlq.Config{Policy: policy, Name: "billing.charge", Logger: quiet}
	dlqTopic := topic + "." + group + ".dlq" // dlq.DeadLetterTopic's default
	switch {
	case be.kafkaBrokers != "":
		kcfg := kafka.Config{Brokers: kafka.ParseBrokers(be.kafkaBrokers), ClientID: "example-dlq"}
		admin, err := kafka.NewAdmin(kcfg)
		if err != nil {
			return nil, err
		}
		defer admin.Close()
		if err := admin.CreateTopic(ctx, kafka.TopicSpec{Name: topic, Partitions: 3}); err != nil && !errors.Is(err, kafka.ErrTopicExists) {
			return nil, err
		}
		c, err := kafkadlq.NewConsumer(kafkadlq.Config{Subscriber: kafka.SubscriberConfig{Config: kcfg}, DLQ: cfg})
		if err != nil {
			return nil, err
		}
		if err := c.CreateTopics(ctx, topic, group, kafka.TopicSpec{}); err != nil {
			c.Close()
			return nil, err
		}
		pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kcfg})
		if err != nil {
			c.Close()
			return nil, err
		}
		in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{Config: kcfg, Topic: dlqTopic, Publisher: pub})
		if err != nil {
			pub.Close()
			c.Close()
			return nil, err
		}
		return &setup{name: "kafka", pub: pub, consumer: c, inspector: in,
			close: func() { in.Close(); c.Close(); pub.Close() }}, nil

	case be.rabbitmqURL != "":
		conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: be.rabbitmqURL, Name: "example-dlq"})
		if err != nil {
			return nil, err
		}
		c, err := rabbitdlq.NewConsumer(rabbitdlq.Config{Conn: conn, DLQ: cfg})
		if err != nil {
			conn.Close()
			return nil, err
		}
		// Declare the exchange, the group's queue and the dead-letter queue
		// before publishing, so nothing published is dropped.
		if err := c.Setup(ctx, topic, group); err != nil {
			c.Close()
			conn.Close()
			return nil, err
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
		if err != nil {
			c.Close()
			conn.Close()
			return nil, err
		}
		in, err := rabbitdlq.NewInspector(rabbitdlq.InspectorConfig{URL: be.rabbitmqURL, Queue: dlqTopic, Publisher: pub, Logger: quiet})
		if err != nil {
			pub.Close()
			c.Close()
			conn.Close()
			return nil, err
		}
		return &setup{name: "rabbitmq", pub: pub, consumer: c, inspector: in, close: func() {
			in.Close()
			c.Close()
			pub.Close()
			// Remove this run's exchanges and queues.
			if topo, err := c.Topology(topic, group); err == nil {
				_ = conn.Delete(context.WithoutCancel(ctx), topo)
			}
			conn.Close()
		}}, nil

	default:
		b := brokermem.New(brokermem.Config{})
		cfg.Publisher, cfg.Subscriber = b, b
		c, err := dlq.New(cfg)
		if err != nil {
			b.Close()
			return nil, err
		}
		return &setup{name: "memory", pub: b, consumer: c, inspector: &memInspector{b: b, topic: dlqTopic},
			close: func() { b.Close() }}, nil
	}
}

// order is the message the billing consumer handles.
type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

var errProviderDown = errors.New("payment provider unavailable")

func run(ctx context.Context, out io.Writer, be backends) error {
	runID := broker.NewID()[24:] // keeps reruns apart
	topic, group := "orders-"+runID, "billing"
	s, err := open(ctx, be, topic, group)
	if err != nil {
		return err
	}
	defer s.close()
	if s.name == "memory" {
		fmt.Fprintln(out, "broker: memory (set STEADFAST_KAFKA_BROKERS or STEADFAST_RABBITMQ_URL for a real broker)")
	} else {
		fmt.Fprintln(out, "broker:", s.name)
	}

	// Four orders; names maps message IDs back to them.
	names := map[string]string{}
	var msgs []broker.Message
	for _, o := range []struct{ name, body string }{
		{"A-1", `{"id":"A-1","amount":10}`},
		{"A-2", `{"id":"A-2",`}, // truncated by a buggy producer
		{"A-3", `{"id":"A-3","amount":30}`},
		{"A-4", `{"id":"A-4","amount":40}`},
	} {
		m := broker.NewMessage(topic, []byte(o.body))
		m.Key = o.name
		names[m.ID] = o.name
		msgs = append(msgs, m)
	}

	// The billing handler. A-3's provider is down until the operator fixes
	// it; A-4's first attempt hits a timeout.
	var (
		mu       sync.Mutex
		history  = map[string][]string{} // per order: what each attempt did
		charged  = map[string]bool{}
		fixed    atomic.Bool
		replayed = map[string]string{} // order -> its steadfast-dlq-replays header
	)
	handler := func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		name := names[d.ID]
		var o order
		if err := json.Unmarshal(d.Payload, &o); err != nil {
			history[name] = append(history[name], fmt.Sprintf("attempt %d: does not decode (permanent)", d.Attempt))
			return dlq.Permanent(fmt.Errorf("decode order: %w", err))
		}
		if o.ID == "A-3" && !fixed.Load() {
			history[name] = append(history[name], fmt.Sprintf("attempt %d: %v", d.Attempt, errProviderDown))
			return errProviderDown // transient: retried
		}
		if o.ID == "A-4" && d.Attempt == 1 {
			history[name] = append(history[name], "attempt 1: timeout")
			return errors.New("timeout")
		}
		history[name] = append(history[name], fmt.Sprintf("attempt %d: charged %d", d.Attempt, o.Amount))
		charged[name] = true
		if r := d.Header(dlq.HeaderReplays); r != "" {
			replayed[name] = r
		}
		return nil
	}
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	subDone := make(chan error, 1)
	go func() {
		subDone <- s.consumer.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, handler)
	}()
	if err := s.pub.Publish(ctx, msgs...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	fmt.Fprintln(out, "published A-1..A-4; the policy allows 3 attempts")

	// Wait until are charged and are dead letters.
	var dls []dlq.DeadLetter
	if err := waitFor(ctx, func() bool {
		mu.Lock()
		done := charged["A-1"] && charged["A-4"]
		mu.Unlock()
		if !done {
			return false
		}
		dls, err = s.inspector.List(ctx, dlq.Filter{})
		return err == nil && len(dls) == 2
	}); err != nil {
		return fmt.Errorf("waiting for the orders to be handled (err %v): %w", err, ctx.Err())
	}
	mu.Lock()
	for _, o := range []string{"A-1", "A-2", "A-3", "A-4"} {
		fmt.Fprintf(out, "%s: %s\n", o, strings.Join(history[o], "; "))
	}
	mu.Unlock()

	// The operator lists the dead letters.
	sort.Slice(dls, func(i, j int) bool { return names[dls[i].ID()] < names[dls[j].ID()] })
	fmt.Fprintln(out, "dead letters (topic <orders>.billing.dlq):")
	ids := map[string]string{}
	for _, dl := range dls {
		e := dl.Envelope
		name := names[dl.ID()]
		ids[name] = dl.ID()
		fmt.Fprintf(out, "  %s: %s after %d attempt(s) by %s/%s: %s\n", name, e.Class, e.Attempts, e.Group, e.Handler, e.Error)
	}

	// The provider is back: replay A-3 to its original topic.
	fixed.Store(true)
	n, err := s.inspector.Replay(ctx, dlq.Filter{IDs: []string{ids["A-3"]}}, dlq.ReplayOptions{})
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	fmt.Fprintf(out, "provider fixed; replayed %d dead letter (A-3)\n", n)
	if err := waitFor(ctx, func() bool { mu.Lock(); defer mu.Unlock(); return charged["A-3"] }); err != nil {
		return fmt.Errorf("waiting for the replay of A-3: %w", err)
	}
	mu.Lock()
	fmt.Fprintf(out, "A-3 after the replay: %s (replays: %s)\n", history["A-3"][len(history["A-3"])-1], replayed["A-3"])
	mu.Unlock()

	// A-2 can never decode: purge it.
	n, err = s.inspector.Purge(ctx, dlq.Filter{IDs: []string{ids["A-2"]}})
	if err != nil {
		return fmt.Errorf("purge: %w", err)
	}
	left, err := s.inspector.List(ctx, dlq.Filter{})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "purged %d dead letter (A-2); %d left\n", n, len(left))

	stop()
	if err := <-subDone; err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "every order charged once except the undecodable A-2: %t\n",
		charged["A-1"] && charged["A-3"] && charged["A-4"] && !charged["A-2"])
	return nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// memInspector is a dlq.Inspector over a memory broker's dead-letter topic,
// for running without a broker. (Kafka and RabbitMQ have theirs in
// dlq/kafkadlq and dlq/rabbitdlq.) The memory broker keeps every message
// published, so replayed and purged dead letters are remembered here.
type memInspector struct {
	b     *brokermem.Broker
	topic string
	mu    sync.Mutex
	gone  map[string]bool // original IDs replayed or purged
}

var _ dlq.Inspector = (*memInspector)(nil)

func (in *memInspector) List(_ context.Context, f dlq.Filter) ([]dlq.DeadLetter, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	var dls []dlq.DeadLetter
	for i, m := range in.b.Published(in.topic) {
		dl := dlq.NewDeadLetter(m, fmt.Sprint(i+1))
		if !in.gone[dl.ID()] {
			dls = append(dls, dl)
		}
	}
	sort.SliceStable(dls, func(i, j int) bool { return dls[i].FailedAt().Before(dls[j].FailedAt()) })
	return f.Select(dls), nil
}

func (in *memInspector) Replay(ctx context.Context, f dlq.Filter, opts dlq.ReplayOptions) (int, error) {
	dls, err := in.List(ctx, f)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, dl := range dls {
		m, err := dlq.ReplayMessage(dl, opts, time.Now())
		if err != nil {
			return n, err
		}
		if err := in.b.Publish(ctx, m); err != nil {
			return n, err
		}
		in.forget(dl.ID())
		n++
	}
	return n, nil
}

func (in *memInspector) Purge(ctx context.Context, f dlq.Filter) (int, error) {
	dls, err := in.List(ctx, f)
	if err != nil {
		return 0, err
	}
	for _, dl := range dls {
		in.forget(dl.ID())
	}
	return len(dls), nil
}

func (in *memInspector) forget(id string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.gone == nil {
		in.gone = map[string]bool{}
	}
	in.gone[id] = true
}
