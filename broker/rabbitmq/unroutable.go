package rabbitmq

import (
	"context"
	"errors"

	"github.com/steadfast-go/steadfast/broker"
)

// Declare declares on conn the exchange of topic and the queues of groups,
// bound to it, with their retry chains: what Subscriber.Setup and Subscribe
// declare for a Subscriber configured with g. Like Conn.Declare it is
// idempotent, is repeated after every reconnect, and returns when ctx ends.
//
// A publishing service calls it at start, with the Groups of its consumers'
// SubscriberConfig and the groups that must receive the topic, so that what
// it publishes before the consumers first run (an outbox relay started
// first, a consumer deployed later) is kept in their queues instead of
// coming back unroutable:
//
//	groups := rabbitmq.Groups{Retry: &rabbitmq.RetryChain{}} // shared with the consumers
//	err := groups.Declare(ctx, pubConn, "orders", "billing", "shipping")
func (g Groups) Declare(ctx context.Context, conn *Conn, topic string, groups ...string) error {
	t, err := g.Topology(topic, groups...)
	if err != nil {
		return err
	}
	return conn.Declare(ctx, t)
}

// warnUnroutable logs at WARN, once per exchange and routing key of a
// Publish call, the messages the broker returned as unroutable, naming what
// is missing: a queue bound to the exchange for the key.
func (p *Publisher) warnUnroutable(msgs []broker.Message, failures []error) {
	type route struct{ exchange, key string }
	var seen map[route]int
	var first map[route]string
	for i, err := range failures {
		if err == nil || !errors.Is(err, ErrUnroutable) {
			continue
		}
		if seen == nil {
			seen, first = map[route]int{}, map[route]string{}
		}
		r := route{msgs[i].Topic, msgs[i].Key}
		if seen[r] == 0 {
			first[r] = msgs[i].ID
		}
		seen[r]++
	}
	for r, n := range seen {
		p.log.Warn("rabbitmq: message unroutable: no queue is bound to the exchange for its routing key; "+
			"declare the consumers' group queues from the publishing side (Groups.Declare) or run their Subscriber.Setup first",
			"exchange", r.exchange, "routing_key", r.key, "messages", n, "id", first[r])
	}
}
