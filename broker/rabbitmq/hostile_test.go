package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// logCounter is a slog handler that counts records at or above WARN by
// message, and forwards everything to next.
type logCounter struct {
	next slog.Handler
	mu   *sync.Mutex
	msgs map[string]int
}

func newLogCounter() *logCounter {
	return &logCounter{next: testLogger().Handler(), mu: &sync.Mutex{}, msgs: map[string]int{}}
}

func (c *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCounter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		c.mu.Lock()
		c.msgs[r.Message]++
		c.mu.Unlock()
	}
	return c.next.Handle(ctx, r)
}
func (c *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCounter{next: c.next.WithAttrs(as), mu: c.mu, msgs: c.msgs}
}
func (c *logCounter) WithGroup(n string) slog.Handler {
	return &logCounter{next: c.next.WithGroup(n), mu: c.mu, msgs: c.msgs}
}

// count returns how many records at WARN or above contain s.
func (c *logCounter) count(s string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for m, k := range c.msgs {
		if strings.Contains(m, s) {
			n += k
		}
	}
	return n
}

// protocolPoison returns one message per AMQP protocol limit, each with
// the name of the limit.
func protocolPoison(topic string) map[string]broker.Message {
	long := strings.Repeat("k", rabbitmq.MaxNameBytes+1)
	out := map[string]broker.Message{}
	add := func(name string, edit func(m *broker.Message)) {
		m := broker.NewMessage(topic, []byte(name))
		m.Key = "poison"
		edit(&m)
		out[name] = m
	}
	add("long key", func(m *broker.Message) { m.Key = long })
	add("long id", func(m *broker.Message) { m.ID = long })
	add("long header name", func(m *broker.Message) { m.Headers = map[string]string{long: "v"} })
	add("long escaped header name", func(m *broker.Message) {
		m.Headers = map[string]string{broker.ReservedHeaderPrefix + strings.Repeat("x", rabbitmq.MaxNameBytes-len(broker.ReservedHeaderPrefix)): "v"}
	})
	add("long type property", func(m *broker.Message) { m.Headers = map[string]string{broker.HeaderType: long} })
	add("long correlation-id property", func(m *broker.Message) { m.Headers = map[string]string{broker.HeaderCorrelationID: long} })
	add("topic not UTF-8", func(m *broker.Message) { m.Topic = topic + "\xff" })
	add("long topic", func(m *broker.Message) { m.Topic = strings.Repeat("t", rabbitmq.MaxNameBytes+1) })
	add("too many headers", func(m *broker.Message) {
		m.Headers = make(map[string]string, rabbitmq.MaxHeaders)
		for i := range rabbitmq.MaxHeaders {
			m.Headers[fmt.Sprint("h", i)] = ""
		}
	})
	add("headers larger than a frame", func(m *broker.Message) {
		m.Headers = map[string]string{"big": strings.Repeat("v", rabbitmq.DefaultFrameMax)}
	})
	return out
}

// TestPublishProtocolLimits: a message breaking an AMQP limit is refused
// before anything of its Publish call is sent, with an error matching
// ErrProtocolLimit and broker.ErrInvalidMessage, and never tears down the
// shared connection: a bystander publisher and consumer on the same
// connections see no error, no loss and no duplicate meanwhile. Messages
// just inside the limits go through.
func TestPublishProtocolLimits(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	logs := newLogCounter()
	conn := dialConfig(t, rabbitmq.Config{URL: url, Logger: slog.New(logs)})
	subConn := dialConfig(t, rabbitmq.Config{URL: url, Logger: slog.New(logs)})
	sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic, _, _ := group(t, url, sub, rabbitmq.Groups{})
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)

	var mu sync.Mutex
	seen := map[string]int{}
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		seen[d.ID]++
		mu.Unlock()
		return nil
	})
	defer r.stop(t)

	// The bystander publishes on the same connection all along.
	var sent []string
	var bystanderErr atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := broker.NewMessage(topic, []byte("bystander"))
			m.Key = fmt.Sprint("b", i%3)
			if err := pub.Publish(ctx, m); err != nil {
				bystanderErr.Store(err)
				return
			}
			sent = append(sent, m.ID)
		}
	}()

	var rejected []string
	for name, bad := range protocolPoison(topic) {
		good := broker.NewMessage(topic, []byte("batch-mate of "+name))
		rejected = append(rejected, good.ID, bad.ID)
		err := pub.Publish(ctx, good, bad)
		if !errors.Is(err, rabbitmq.ErrProtocolLimit) || !errors.Is(err, broker.ErrInvalidMessage) {
			t.Errorf("%s: err = %v, want ErrProtocolLimit and ErrInvalidMessage", name, err)
		} else if !strings.Contains(err.Error(), "message 1") {
			t.Errorf("%s: err = %v, want it to name message 1", name, err)
		}
	}
	// At the limits, everything passes.
	edge := broker.NewMessage(topic, []byte("edge"))
	edge.ID = strings.Repeat("i", rabbitmq.MaxNameBytes)
	edge.Key = strings.Repeat("k", rabbitmq.MaxNameBytes)
	edge.Headers = map[string]string{strings.Repeat("h", rabbitmq.MaxNameBytes): "v", broker.HeaderType: strings.Repeat("t", rabbitmq.MaxNameBytes)}
	many := broker.NewMessage(topic, []byte("many headers"))
	many.Headers = make(map[string]string, rabbitmq.MaxHeaders-2)
	for i := range rabbitmq.MaxHeaders - 2 {
		many.Headers[fmt.Sprint("h", i)] = ""
	}
	if err := pub.Publish(ctx, edge, many); err != nil {
		t.Fatalf("messages at the limits: %v", err)
	}
	close(stop)
	<-done
	if err, _ := bystanderErr.Load().(error); err != nil {
		t.Fatalf("bystander publish failed: %v", err)
	}
	want := append([]string{edge.ID, many.ID}, sent...)
	waitFor(t, "every bystander message and the messages at the limits", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range want {
			if seen[id] == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(300 * time.Millisecond) // late duplicates
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if n > 1 {
			t.Errorf("message %s delivered %d times", id, n)
		}
	}
	for _, id := range rejected {
		if seen[id] > 0 {
			t.Errorf("message %.40s of a rejected call was delivered", id)
		}
	}
	if n := logs.count("connection lost"); n > 0 {
		t.Errorf("%d connection losses logged", n)
	}
	t.Logf("bystander published %d messages meanwhile", len(sent))
}

// TestUndecodableDelivery: messages from a raw producer that amqp091
// cannot decode (a header table of more than 8,192 entries, nesting deeper
// than 32 levels) are confirmed by the broker. The subscriber survives
// them: it rejects each to the queue's dead-letter exchange with an ERROR
// log, its connection stays up, and the messages around them, of the same
// key, are handled in order. A bystander subscription on the same
// connection sees no duplicate.
func TestUndecodableDelivery(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	logs := newLogCounter()
	conn := dialConfig(t, rabbitmq.Config{URL: url, Logger: slog.New(logs)})
	dlx, dlq := testenv.Name(t, "dlx"), testenv.Name(t, "dlq")
	extra := rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: dlx, Kind: rabbitmq.ExchangeFanout}},
		Queues:    []rabbitmq.Queue{{Name: dlq}},
		Bindings:  []rabbitmq.Binding{{Exchange: dlx, Queue: dlq}},
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{Groups: rabbitmq.Groups{Queue: rabbitmq.Queue{DeadLetterExchange: dlx}}})
	if err != nil {
		t.Fatal(err)
	}
	topic, _, pub := group(t, url, sub, rabbitmq.Groups{}, extra)
	bystanderSub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	bystanderTopic, _, _ := group(t, url, bystanderSub, rabbitmq.Groups{})

	ch := raw(t, url)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 16))
	many := amqp.Table{}
	for i := range rabbitmq.MaxHeaders + 1 {
		many[fmt.Sprint("h", i)] = ""
	}
	deep := amqp.Table{"leaf": "x"}
	for range 40 {
		deep = amqp.Table{"n": deep}
	}
	longArray := make([]any, rabbitmq.MaxHeaders+1)
	for i := range longArray {
		longArray[i] = int64(i)
	}
	sends := []amqp.Publishing{
		{MessageId: "good-0", Body: []byte("0")},
		{MessageId: "too-many-headers", Headers: many},
		{MessageId: "deep", Headers: amqp.Table{"deep": deep}},
		{MessageId: "long-array", Headers: amqp.Table{"a": longArray}},
		{MessageId: "good-1", Body: []byte("1"), Headers: amqp.Table{"ok": amqp.Table{"nested": []any{"fine", int32(1)}}}},
	}
	ctx := ctxT(t)
	for _, p := range sends {
		if err := ch.PublishWithContext(ctx, topic, "k", true, false, p); err != nil {
			t.Fatal(err)
		}
		if c := <-confirms; !c.Ack {
			t.Fatalf("%s not confirmed", p.MessageId)
		}
	}

	var mu sync.Mutex
	var got []string
	bystanderSeen := map[string]int{}
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		got = append(got, d.ID)
		mu.Unlock()
		return nil
	})
	defer r.stop(t)
	rb := start(bystanderSub, broker.Subscription{Topic: bystanderTopic, Group: "g"}, func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		bystanderSeen[d.ID]++
		mu.Unlock()
		return nil
	})
	defer rb.stop(t)
	bpub, err := rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var bystander []string
	for range 20 {
		m := broker.NewMessage(bystanderTopic, []byte("b"))
		if err := bpub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		bystander = append(bystander, m.ID)
	}
	_ = pub

	waitFor(t, "the good messages and the bystander's", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 2 && len(bystanderSeen) == len(bystander)
	})
	waitFor(t, "three rejected messages in the dead-letter queue", func() bool { return queueDepth(t, ch, dlq) == 3 })
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "good-0" || got[1] != "good-1" {
		t.Errorf("handled %v, want [good-0 good-1]", got)
	}
	for id, n := range bystanderSeen {
		if n != 1 {
			t.Errorf("bystander message %s delivered %d times", id, n)
		}
	}
	if n := logs.count("connection lost"); n > 0 {
		t.Errorf("%d connection losses logged", n)
	}
	if n := logs.count("cannot be decoded"); n != 3 {
		t.Errorf("%d undecodable deliveries logged, want 3", n)
	}
}

// TestDeclareFromPublishingSide: a publisher started before any consumer
// gets ErrUnroutable and a WARN naming the exchange and routing key; once
// the publishing side declared the topology with the consumers' Groups
// (group queue and retry chain), what it publishes waits in the queue for
// the consumer, which sees the same queue.
func TestDeclareFromPublishingSide(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	logs := newLogCounter()
	pubConn := dialConfig(t, rabbitmq.Config{URL: url, Logger: slog.New(logs)})
	groups := rabbitmq.Groups{Retry: &rabbitmq.RetryChain{Delays: []time.Duration{time.Second}}}
	topic := testenv.Name(t, "t")
	topo, err := groups.Topology(topic, "billing")
	if err != nil {
		t.Fatal(err)
	}
	newCleaner(t, url).add(topo)
	pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	early := broker.NewMessage(topic, []byte("early"))
	early.Key = "order-1"
	if err := pub.Publish(ctx, early, early); !errors.Is(err, rabbitmq.ErrUnroutable) {
		t.Fatalf("publish before any queue: err = %v, want ErrUnroutable", err)
	}
	if n := logs.count("unroutable"); n != 1 {
		t.Errorf("%d WARN logs about unroutable messages, want 1 for the exchange and key", n)
	}

	if err := groups.Declare(ctx, pubConn, topic, "billing"); err != nil {
		t.Fatal(err)
	}
	m := broker.NewMessage(topic, []byte("kept"))
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatalf("publish after Groups.Declare: %v", err)
	}
	ch := raw(t, url)
	if n := queueDepth(t, ch, groups.QueueFor(topic, "billing")); n != 1 {
		t.Fatalf("group queue holds %d messages, want 1", n)
	}
	for _, q := range topo.Queues {
		queueDepth(t, ch, q.Name) // the retry chain exists too
	}
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: groups})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan broker.Delivery, 1)
	r := start(sub, broker.Subscription{Topic: topic, Group: "billing"}, func(_ context.Context, d broker.Delivery) error {
		got <- d
		return nil
	})
	defer r.stop(t)
	select {
	case d := <-got:
		if d.ID != m.ID || d.Attempt != 1 {
			t.Errorf("got %s attempt %d, want %s attempt 1", d.ID, d.Attempt, m.ID)
		}
	case <-time.After(time.Minute):
		t.Fatal("message not consumed")
	}
}
