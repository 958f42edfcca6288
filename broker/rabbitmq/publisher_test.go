package rabbitmq_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// boundQueue declares a direct exchange with a queue bound for key and
// returns their names.
func boundQueue(t *testing.T, url string, conn *rabbitmq.Conn, key string) (exchange, queue string) {
	t.Helper()
	exchange, queue = testenv.Name(t, "x"), testenv.Name(t, "q")
	topo := rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: exchange, Kind: rabbitmq.ExchangeDirect}},
		Queues:    []rabbitmq.Queue{{Name: queue}},
		Bindings:  []rabbitmq.Binding{{Exchange: exchange, Queue: queue, Key: key}},
	}
	newCleaner(t, url).add(topo)
	if err := conn.Declare(ctxT(t), topo); err != nil {
		t.Fatal(err)
	}
	return exchange, queue
}

func queueDepth(t *testing.T, ch *amqp.Channel, queue string) int {
	t.Helper()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return q.Messages
}

// TestPublishUnroutable: with mandatory publishing, a message no queue is
// bound for is an error naming exactly that message; the others of the
// batch are enqueued. Two unconfirmed messages that look alike to a
// basic.return (same ID, exchange and key) are still told apart.
func TestPublishUnroutable(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	ex, q := boundQueue(t, url, conn, "yes")
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	msg := func(key, id string) broker.Message {
		m := broker.NewMessage(ex, []byte(key))
		m.Key = key
		if id != "" {
			m.ID = id
		}
		return m
	}
	batch := []broker.Message{msg("yes", ""), msg("no", ""), msg("yes", ""),
		msg("no", "same-id"), msg("no", "same-id"), msg("yes", "same-id")}
	err = pub.Publish(ctx, batch...)
	var pe *broker.PublishError
	if !errors.As(err, &pe) || !errors.Is(err, rabbitmq.ErrUnroutable) {
		t.Fatalf("err = %v, want a *broker.PublishError matching ErrUnroutable", err)
	}
	var idx []int
	for _, f := range pe.Failures {
		idx = append(idx, f.Index)
		if f.ID != batch[f.Index].ID {
			t.Errorf("failure %d names ID %s, want %s", f.Index, f.ID, batch[f.Index].ID)
		}
	}
	if len(idx) != 3 || idx[0] != 1 || idx[1] != 3 || idx[2] != 4 {
		t.Errorf("failed indices %v, want [1 3 4]", idx)
	}
	if failed := pe.Failed(batch); len(failed) != 3 || failed[0].Key != "no" {
		t.Errorf("Failed() = %v", failed)
	}
	ch := raw(t, url)
	if n := queueDepth(t, ch, q); n != 3 {
		t.Errorf("queue holds %d messages, want 3", n)
	}
	// The marker that told the look-alikes apart does not reach consumers
	// as a header.
	for range 3 {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		for k := range d.Headers {
			if k != "steadfast-time" && strings.HasPrefix(k, broker.ReservedHeaderPrefix) {
				if d.MessageId != "same-id" {
					t.Errorf("message %s carries %s", d.MessageId, k)
				}
			}
		}
	}
}

// TestPublishMissingExchange: with NoDeclare a missing exchange is
// ErrNotFound; by default the exchange is declared, and with no queue bound
// the message is unroutable. Nothing is silently dropped either way.
func TestPublishMissingExchange(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	ex := testenv.Name(t, "x")
	newCleaner(t, url).add(rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{Name: ex}}})

	strict, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := strict.Publish(ctx, broker.NewMessage(ex, nil)); !errors.Is(err, rabbitmq.ErrNotFound) {
		t.Errorf("NoDeclare publish to a missing exchange: err = %v, want ErrNotFound", err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Publish(ctx, broker.NewMessage(ex, nil)); !errors.Is(err, rabbitmq.ErrUnroutable) {
		t.Errorf("publish to a new exchange without queues: err = %v, want ErrUnroutable", err)
	}
	if err := raw(t, url).ExchangeDeclarePassive(ex, "topic", true, false, false, false, nil); err != nil {
		t.Errorf("exchange was not declared: %v", err)
	}
}

// TestPublishMapping: what other AMQP clients see of a published message:
// persistent, message-id, properties, timestamp, string headers; and how a
// W3C trace context in ctx is propagated.
func TestPublishMapping(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	ex, q := boundQueue(t, url, conn, "k")
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m := broker.NewMessage(ex, []byte("body"))
	m.Key = "k"
	m.Headers = map[string]string{broker.HeaderCorrelationID: "c", broker.HeaderContentType: "text/plain", "h": "v"}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	headersBefore := maps.Clone(m.Headers)
	if err := pub.Publish(trace.ContextWithSpanContext(ctx, sc), m); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(m.Headers, headersBefore) {
		t.Errorf("Publish modified the caller's headers: %v", m.Headers)
	}
	d, ok, err := raw(t, url).Get(q, true)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if d.DeliveryMode != amqp.Persistent || d.MessageId != m.ID || d.CorrelationId != "c" || d.ContentType != "text/plain" ||
		d.Headers["h"] != "v" || !d.Timestamp.Equal(m.Time.Truncate(time.Second)) {
		t.Errorf("raw delivery: mode %d id %q corr %q ct %q headers %v ts %v", d.DeliveryMode, d.MessageId, d.CorrelationId, d.ContentType, d.Headers, d.Timestamp)
	}
	if tp, _ := d.Headers[broker.HeaderTraceparent].(string); tp != "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01" {
		t.Errorf("traceparent = %q", tp)
	}
}

// TestPublishClosedAndCancelled: a closed publisher and a cancelled context
// are errors.
func TestPublishClosedAndCancelled(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	conn := dial(t, url)
	ex, _ := boundQueue(t, url, conn, "")
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := pub.Publish(cctx, broker.NewMessage(ex, nil)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: err = %v", err)
	}
	if err := pub.Publish(ctxT(t), broker.NewMessage(ex, nil)); err != nil {
		t.Fatal(err)
	}
	pub.Close()
	if err := pub.Publish(ctxT(t), broker.NewMessage(ex, nil)); !errors.Is(err, broker.ErrClosed) {
		t.Errorf("closed publisher: err = %v, want ErrClosed", err)
	}
	if _, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Window: -1}); !errors.Is(err, rabbitmq.ErrInvalidConfig) {
		t.Errorf("negative window: err = %v", err)
	}
	if _, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{ExchangeKind: "nope"}); !errors.Is(err, rabbitmq.ErrInvalidConfig) {
		t.Errorf("bad exchange kind: err = %v", err)
	}
}

// TestPublishAfterExchangeDeleted: a publish to an exchange deleted behind
// the publisher's back makes the broker close the channel (NOT_FOUND); the
// publisher opens a new channel, declares the exchange again (or, with
// NoDeclare, reports ErrNotFound), and the messages of other exchanges that
// were on the closed channel are sent again, not lost.
func TestPublishAfterExchangeDeleted(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	ex, exQ := boundQueue(t, url, conn, "k")
	other, otherQ := boundQueue(t, url, conn, "k")
	for _, noDeclare := range []bool{true, false} {
		if err := conn.Declare(ctx, rabbitmq.Topology{
			Exchanges: []rabbitmq.Exchange{{Name: ex, Kind: rabbitmq.ExchangeDirect}},
			Bindings:  []rabbitmq.Binding{{Exchange: ex, Queue: exQ, Key: "k"}},
		}); err != nil {
			t.Fatal(err)
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 1, NoDeclare: noDeclare})
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, keyed(ex), keyed(other)); err != nil {
			t.Fatal(err)
		}
		if err := raw(t, url).ExchangeDelete(ex, false, false); err != nil {
			t.Fatal(err)
		}
		err = pub.Publish(ctx, keyed(other), keyed(ex), keyed(other))
		var pe *broker.PublishError
		if !errors.As(err, &pe) || len(pe.Failures) != 1 || pe.Failures[0].Index != 1 {
			t.Fatalf("NoDeclare=%v: err = %v, want only message 1 to fail", noDeclare, err)
		}
		want := rabbitmq.ErrUnroutable // declared again, but nothing is bound
		if noDeclare {
			want = rabbitmq.ErrNotFound
		}
		if !errors.Is(err, want) {
			t.Errorf("NoDeclare=%v: err = %v, want %v", noDeclare, err, want)
		}
		pub.Close()
	}
	// Messages that were unconfirmed when the channel closed were sent
	// again: at least once, possibly twice.
	if n := queueDepth(t, raw(t, url), otherQ); n < 6 {
		t.Errorf("other queue holds %d messages, want at least 6", n)
	} else {
		t.Logf("other queue holds %d messages for 6 published (resent after the channel closed)", n)
	}
}

// TestPublisherCloseWaitsForConfirms: Close called while Publish calls are
// streaming batches (each channel's confirm window full, so messages are
// sent and unconfirmed) waits for their confirms. Per message, with the
// connection up throughout, the only possible outcomes are: confirmed (the
// call returns nil for it) and in the queue, or not sent because the
// publisher closed (an error matching broker.ErrClosed) and not in the
// queue. A message in flight when Close ran is never abandoned (an error
// such as ErrConnectionLost for a message the broker may hold), and when
// Close returns every message that will ever be reported confirmed is
// already in the queue.
func TestPublisherCloseWaitsForConfirms(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	conn := dial(t, url)
	ch := raw(t, url)
	// A round covers the guarantee when Close cut a Publish call in the
	// middle: part of its batch confirmed, the rest refused with ErrClosed.
	// That is all but certain in the first round; a few more are allowed
	// so the test never depends on scheduling.
	for round := 1; ; round++ {
		if closeDuringPublish(t, url, conn, ch) || t.Failed() {
			return
		}
		if round == 5 {
			t.Fatal("in 5 rounds Close never ended a Publish call in the middle of its batch")
		}
	}
}

// closeDuringPublish runs one round of TestPublisherCloseWaitsForConfirms
// and reports whether Close cut a Publish call in the middle.
func closeDuringPublish(t *testing.T, url string, conn *rabbitmq.Conn, ch *amqp.Channel) (cut bool) {
	t.Helper()
	const (
		publishers = 8
		batchSize  = 40
		warmup     = 3 // successful calls before Close
	)
	ctx := ctxT(t)
	ex, q := boundQueue(t, url, conn, "k")
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{Channels: 2, Window: 32})
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu       sync.Mutex
		outcome  = map[string]error{} // message ID -> what Publish said
		cutCalls int                  // calls with both confirmed and refused messages
		okCalls  int
	)
	warm := make(chan struct{})
	var warmOnce sync.Once
	var wg sync.WaitGroup
	for range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				batch := make([]broker.Message, batchSize)
				for i := range batch {
					batch[i] = broker.NewMessage(ex, nil)
					batch[i].Key = "k"
				}
				err := pub.Publish(ctx, batch...)
				failed := map[int]error{}
				var pe *broker.PublishError
				switch {
				case err == nil:
				case errors.As(err, &pe):
					for _, f := range pe.Failures {
						failed[f.Index] = f.Err
					}
				default: // the whole call was refused
					for i := range batch {
						failed[i] = err
					}
				}
				mu.Lock()
				for i, m := range batch {
					outcome[m.ID] = failed[i]
				}
				if len(failed) > 0 && len(failed) < len(batch) {
					cutCalls++
				}
				if err == nil {
					okCalls++
					if okCalls == warmup {
						warmOnce.Do(func() { close(warm) })
					}
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	select {
	case <-warm:
	case <-ctx.Done():
		t.Fatal("publishers made no progress")
	}
	if err := pub.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close has returned: everything it waited for is in the queue now.
	atClose := queueDepth(t, ch, q)
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	confirmed := map[string]bool{}
	refused := 0
	for id, err := range outcome {
		switch {
		case err == nil:
			confirmed[id] = true
		case errors.Is(err, broker.ErrClosed):
			refused++
		default:
			t.Errorf("message %s: Publish error %v; with the connection up, Close may only refuse unsent messages (broker.ErrClosed)", id, err)
		}
	}
	if atClose != len(confirmed) {
		t.Errorf("queue held %d messages when Close returned; %d were reported confirmed", atClose, len(confirmed))
	}
	n := queueDepth(t, ch, q)
	if n != atClose {
		t.Errorf("queue depth went from %d when Close returned to %d after the publishers stopped", atClose, n)
	}
	seen := map[string]int{}
	for range n {
		d, ok, err := ch.Get(q, true)
		if err != nil || !ok {
			t.Fatalf("get: %v %v", ok, err)
		}
		seen[d.MessageId]++
	}
	for id, c := range seen {
		switch {
		case c > 1:
			t.Errorf("message %s is in the queue %d times", id, c)
		case !confirmed[id]:
			t.Errorf("message %s is in the queue but Publish reported it failed: %v", id, outcome[id])
		}
	}
	for id := range confirmed {
		if seen[id] == 0 {
			t.Errorf("message %s was reported confirmed but is not in the queue", id)
		}
	}
	t.Logf("%d messages confirmed (%d calls fully), %d refused with ErrClosed, %d calls cut by Close", len(confirmed), okCalls, refused, cutCalls)
	return cutCalls > 0
}
