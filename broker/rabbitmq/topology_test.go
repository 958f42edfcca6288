package rabbitmq_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestDeclareIdempotentAndConflicts: declaring the same topology twice is a
// no-op; declaring an exchange or queue again with other properties is a
// clear *DeclareError matching ErrTopologyConflict, naming the entity and
// carrying the broker's reason; a binding to a missing exchange matches
// ErrNotFound.
func TestDeclareIdempotentAndConflicts(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	ex, q, qq := testenv.Name(t, "x"), testenv.Name(t, "q"), testenv.Name(t, "qq")
	topo := rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: ex, Kind: rabbitmq.ExchangeTopic}},
		Queues: []rabbitmq.Queue{
			{Name: q, MessageTTL: time.Minute, MaxLength: 100},
			{Name: qq, Type: rabbitmq.QueueQuorum},
		},
		Bindings: []rabbitmq.Binding{{Exchange: ex, Queue: q, Key: "a.#"}, {Exchange: ex, Queue: qq, Key: "#"}},
	}
	newCleaner(t, url).add(topo)
	for i := range 2 {
		if err := conn.Declare(ctx, topo); err != nil {
			t.Fatalf("declare #%d: %v", i+1, err)
		}
	}

	for _, c := range []struct {
		name   string
		topo   rabbitmq.Topology
		entity string
	}{
		{"exchange kind", rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{Name: ex, Kind: rabbitmq.ExchangeFanout}}}, "exchange"},
		{"exchange durability", rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{Name: ex, Transient: true}}}, "exchange"},
		{"queue type", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: qq, Type: rabbitmq.QueueClassic}}}, "queue"},
		{"queue TTL", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: q, MessageTTL: time.Second, MaxLength: 100}}}, "queue"},
	} {
		err := conn.Declare(ctx, c.topo)
		var de *rabbitmq.DeclareError
		if !errors.Is(err, rabbitmq.ErrTopologyConflict) || !errors.As(err, &de) || de.Entity != c.entity {
			t.Errorf("%s: err = %v, want a %s *DeclareError matching ErrTopologyConflict", c.name, err, c.entity)
			continue
		}
		var ae *amqp.Error
		if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
			t.Errorf("%s: err %v does not carry the broker's PRECONDITION_FAILED", c.name, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "conflicts with the existing") || !strings.Contains(msg, "inequivalent arg") {
			t.Errorf("%s: unclear message %q", c.name, msg)
		}
		t.Logf("%s: %v", c.name, err)
	}

	err := conn.Declare(ctx, rabbitmq.Topology{Bindings: []rabbitmq.Binding{{Exchange: testenv.Name(t, "missing"), Queue: q}}})
	if !errors.Is(err, rabbitmq.ErrNotFound) || errors.Is(err, rabbitmq.ErrTopologyConflict) {
		t.Errorf("binding to a missing exchange: err = %v, want ErrNotFound", err)
	}

	// The original definitions are untouched and still work after the
	// failed declarations.
	if err := conn.Declare(ctx, topo); err != nil {
		t.Fatalf("declare after conflicts: %v", err)
	}
}

func TestTopologyValidation(t *testing.T) {
	for _, c := range []struct {
		name string
		topo rabbitmq.Topology
	}{
		{"unnamed exchange", rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{}}}},
		{"unknown kind", rabbitmq.Topology{Exchanges: []rabbitmq.Exchange{{Name: "x", Kind: "x-random"}}}},
		{"unnamed queue", rabbitmq.Topology{Queues: []rabbitmq.Queue{{}}}},
		{"exclusive quorum", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: "q", Type: rabbitmq.QueueQuorum, Exclusive: true}}}},
		{"delivery limit on classic", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: "q", DeliveryLimit: 3}}}},
		{"field and arg", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: "q", MessageTTL: time.Second, Args: amqp.Table{"x-message-ttl": int64(5)}}}}},
		{"sub-millisecond TTL", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: "q", MessageTTL: time.Microsecond}}}},
		{"binding without queue", rabbitmq.Topology{Bindings: []rabbitmq.Binding{{Exchange: "x"}}}},
		{"long name", rabbitmq.Topology{Queues: []rabbitmq.Queue{{Name: strings.Repeat("q", 256)}}}},
	} {
		if err := c.topo.Validate(); !errors.Is(err, rabbitmq.ErrInvalidTopology) {
			t.Errorf("%s: Validate = %v, want ErrInvalidTopology", c.name, err)
		}
	}
	if _, err := (rabbitmq.RetryChain{Delays: []time.Duration{time.Microsecond}}).Topology(rabbitmq.Queue{Name: "q"}); !errors.Is(err, rabbitmq.ErrInvalidTopology) {
		t.Errorf("retry chain with a sub-millisecond delay: %v", err)
	}
	if _, err := (rabbitmq.RetryChain{}).Topology(rabbitmq.Queue{Name: "q", DeadLetterExchange: "elsewhere"}); !errors.Is(err, rabbitmq.ErrInvalidTopology) {
		t.Errorf("retry chain around a queue with its own DLX: %v", err)
	}
}

// TestExchangeKinds: direct, topic, fanout and headers exchanges route
// published messages as declared.
func TestExchangeKinds(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	conn := dial(t, url)
	name := func(p string) string { return testenv.Name(t, p) }
	direct, topic, fanout, headers := name("direct"), name("topic"), name("fanout"), name("headers")
	qDirect, qTopic, qFan1, qFan2, qHeaders := name("qd"), name("qt"), name("qf1"), name("qf2"), name("qh")
	topo := rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{
			{Name: direct, Kind: rabbitmq.ExchangeDirect},
			{Name: topic, Kind: rabbitmq.ExchangeTopic},
			{Name: fanout, Kind: rabbitmq.ExchangeFanout},
			{Name: headers, Kind: rabbitmq.ExchangeHeaders},
		},
		Queues: []rabbitmq.Queue{{Name: qDirect}, {Name: qTopic}, {Name: qFan1}, {Name: qFan2}, {Name: qHeaders}},
		Bindings: []rabbitmq.Binding{
			{Exchange: direct, Queue: qDirect, Key: "exact"},
			{Exchange: topic, Queue: qTopic, Key: "orders.*.eu"},
			{Exchange: fanout, Queue: qFan1},
			{Exchange: fanout, Queue: qFan2},
			{Exchange: headers, Queue: qHeaders, Args: amqp.Table{"x-match": "all", "region": "eu", "tier": "gold"}},
		},
	}
	newCleaner(t, url).add(topo)
	if err := conn.Declare(ctx, topo); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	msg := func(ex, key string, h map[string]string) broker.Message {
		m := broker.NewMessage(ex, []byte(key))
		m.Key, m.Headers = key, h
		return m
	}
	if err := pub.Publish(ctx,
		msg(direct, "exact", nil),
		msg(topic, "orders.42.eu", nil),
		msg(fanout, "whatever", nil),
		msg(headers, "", map[string]string{"region": "eu", "tier": "gold"}),
	); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ex, key string
		h       map[string]string
	}{
		{direct, "exac", nil},
		{topic, "orders.42.us", nil},
		{headers, "", map[string]string{"region": "eu", "tier": "silver"}},
	} {
		if err := pub.Publish(ctx, msg(c.ex, c.key, c.h)); !errors.Is(err, rabbitmq.ErrUnroutable) {
			t.Errorf("publish to %s with key %q headers %v: err = %v, want ErrUnroutable", c.ex, c.key, c.h, err)
		}
	}
	ch := raw(t, url)
	for _, q := range []string{qDirect, qTopic, qFan1, qFan2, qHeaders} {
		info, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if info.Messages != 1 {
			t.Errorf("queue %s holds %d messages, want 1", q, info.Messages)
		}
	}
}
