package rabbitmq

import (
	"fmt"
	"strconv"
	"time"
)

// Groups maps broker topics and consumer groups to RabbitMQ entities:
//
//   - a topic is a durable exchange of ExchangeKind (topic by default);
//     Message.Key is the routing key;
//   - a group is a durable queue, named QueueName(topic, group) (by default
//     "<topic>.<group>"), bound to the topic's exchange with BindingKey ("#":
//     every key). Every group therefore receives every message, and the
//     members of a group (each Subscribe call) consume from the one queue.
//
// By default group queues are single-active-consumer queues: one member
// receives the messages and the others stand by and take over, in queue
// order, when it stops. That is what keeps the per-key order of
// broker.Subscriber across the members of a group (within the active member,
// different keys still run in parallel, up to Subscription.Concurrency).
// Competing lets every member consume at once, for throughput beyond one
// process, and then orders keys only within each member.
//
// The zero value is ready to use.
type Groups struct {
	// ExchangeKind is the kind of the topic exchanges. Default
	// ExchangeTopic.
	ExchangeKind ExchangeKind
	// BindingKey binds group queues to their topic exchange. Default "#"
	// for topic exchanges (every routing key), "" otherwise.
	BindingKey string
	// Queue is the template of group queues: every field but Name applies
	// (Type, MessageTTL, MaxLength, DeadLetterExchange, Args, ...).
	Queue Queue
	// Competing makes the members of a group consume concurrently instead
	// of one at a time. Per-key order then holds within a member only.
	Competing bool
	// Retry, when set, puts a retry chain behind every group queue (see
	// RetryChain): a handler failure rejects the message to the chain, which
	// brings it back after a growing delay and parks it after the last one.
	// Messages that take the chain leave their key's order.
	Retry *RetryChain
	// QueueName names the queue of a group. Default: topic + "." + group.
	QueueName func(topic, group string) string
}

func (g Groups) exchangeKind() ExchangeKind {
	if g.ExchangeKind == "" {
		return ExchangeTopic
	}
	return g.ExchangeKind
}

// QueueFor returns the name of the queue of group on topic.
func (g Groups) QueueFor(topic, group string) string {
	if g.QueueName != nil {
		return g.QueueName(topic, group)
	}
	return topic + "." + group
}

// Topology returns the exchange of topic, the queues of groups bound to it
// and, with Retry set, their retry chains.
func (g Groups) Topology(topic string, groups ...string) (Topology, error) {
	if topic == "" {
		return Topology{}, fmt.Errorf("%w: empty topic", ErrInvalidTopology)
	}
	key := g.BindingKey
	if key == "" && g.exchangeKind() == ExchangeTopic {
		key = "#"
	}
	t := Topology{Exchanges: []Exchange{{Name: topic, Kind: g.exchangeKind()}}}
	for _, group := range groups {
		if group == "" {
			return Topology{}, fmt.Errorf("%w: empty group", ErrInvalidTopology)
		}
		q := g.Queue
		q.Name = g.QueueFor(topic, group)
		if !g.Competing {
			q.SingleActiveConsumer = true
		}
		t.Bindings = append(t.Bindings, Binding{Exchange: topic, Queue: q.Name, Key: key})
		if g.Retry != nil {
			rt, err := g.Retry.Topology(q)
			if err != nil {
				return Topology{}, err
			}
			t = t.Merge(rt)
			continue
		}
		t.Queues = append(t.Queues, q)
	}
	return t, t.Validate()
}

// RetryChain builds a dead-letter retry chain around a queue, entirely in
// broker topology:
//
//	main --reject--> <main>.retry (direct exchange)
//	      first rejection (any routing key, via alternate exchange <main>.retry.first)
//	        -> queue <main>.retry.1 (TTL Delays[0]) --expire--> <main>.return --> main
//	      routing key steadfast.retry.<n> -> queue <main>.retry.<n> (TTL Delays[n-1]) --> main
//	      routing key steadfast.parking   -> queue <main>.parking (kept until someone acts)
//
// Each retry queue dead-letters expired messages back to main through the
// fanout exchange <main>.return, with the routing key of the next hop, so a
// message rejected from main goes one step further down the chain each time
// and lands in the parking queue after len(Delays)+1 failed attempts. The
// broker records every hop in the message's x-death header: the Subscriber
// reads the attempt number from it (Delivery.Attempt) and restores the
// message's original topic and key, and Deaths decodes it.
//
// Costs and limits: a retried message leaves its queue, so later messages of
// the same key may be handled before it; a message whose original routing
// key is literally steadfast.retry.<n> or steadfast.parking takes a shortcut;
// classic-queue dead-lettering is at most once (a node crash mid-hop can lose
// the message), use quorum queues with dead-letter-strategy at-least-once
// where that matters.
type RetryChain struct {
	// Delays before each retry, at least 1ms each. Default 5s, 30s, 5m.
	Delays []time.Duration
}

func (rc RetryChain) delays() []time.Duration {
	if len(rc.Delays) == 0 {
		return []time.Duration{5 * time.Second, 30 * time.Second, 5 * time.Minute}
	}
	return rc.Delays
}

// MaxAttempts is the number of handler attempts before a message is parked.
func (rc RetryChain) MaxAttempts() int { return len(rc.delays()) + 1 }

// ParkingQueue returns the name of the parking queue of the chain around
// the queue named main.
func ParkingQueue(main string) string { return main + ".parking" }

// RetryQueue returns the name of the queue of retry level (1-based) of the
// chain around the queue named main.
func RetryQueue(main string, level int) string { return main + ".retry." + strconv.Itoa(level) }

func retryKey(level int) string { return "steadfast.retry." + strconv.Itoa(level) }

const parkingKey = "steadfast.parking"

// Topology returns main with its dead-letter exchange set, and the
// exchanges, queues and bindings of the chain. Retry and parking queues have
// main's type and durability. main must not have a dead-letter exchange or
// routing key of its own.
func (rc RetryChain) Topology(main Queue) (Topology, error) {
	delays := rc.delays()
	if len(delays) > 100 {
		return Topology{}, fmt.Errorf("%w: retry chain of %d levels (at most 100)", ErrInvalidTopology, len(delays))
	}
	for i, d := range delays {
		if d < time.Millisecond {
			return Topology{}, fmt.Errorf("%w: retry delay %d is %v, below 1ms", ErrInvalidTopology, i+1, d)
		}
	}
	if err := validName("queue", main.Name); err != nil {
		return Topology{}, err
	}
	dlx := main.Name + ".retry"
	if main.DeadLetterExchange != "" && main.DeadLetterExchange != dlx || main.DeadLetterRoutingKey != "" {
		return Topology{}, fmt.Errorf("%w: queue %q already has a dead-letter exchange or routing key; a retry chain sets its own", ErrInvalidTopology, main.Name)
	}
	first, back := dlx+".first", main.Name+".return"
	main.DeadLetterExchange = dlx
	t := Topology{
		Exchanges: []Exchange{
			{Name: first, Kind: ExchangeFanout, Transient: main.Transient},
			{Name: dlx, Kind: ExchangeDirect, Transient: main.Transient, AlternateExchange: first},
			{Name: back, Kind: ExchangeFanout, Transient: main.Transient},
		},
		Queues:   []Queue{main},
		Bindings: []Binding{{Exchange: back, Queue: main.Name}},
	}
	for i, d := range delays {
		level := i + 1
		next := parkingKey
		if level < len(delays) {
			next = retryKey(level + 1)
		}
		q := Queue{
			Name: RetryQueue(main.Name, level), Type: main.Type, Transient: main.Transient,
			MessageTTL: d, DeadLetterExchange: back, DeadLetterRoutingKey: next,
		}
		t.Queues = append(t.Queues, q)
		if level == 1 {
			t.Bindings = append(t.Bindings, Binding{Exchange: first, Queue: q.Name})
		} else {
			t.Bindings = append(t.Bindings, Binding{Exchange: dlx, Queue: q.Name, Key: retryKey(level)})
		}
	}
	park := Queue{Name: ParkingQueue(main.Name), Type: main.Type, Transient: main.Transient}
	t.Queues = append(t.Queues, park)
	t.Bindings = append(t.Bindings, Binding{Exchange: dlx, Queue: park.Name, Key: parkingKey})
	return t, t.Validate()
}

// source returns what the subscriber's decoding needs to know of the queue
// of group on topic.
func (g Groups) source(topic, group string) source {
	src := source{queue: g.QueueFor(topic, group), topic: topic, quorum: g.Queue.Type == QueueQuorum}
	if g.Retry != nil {
		src.chainLevels = len(g.Retry.delays())
	}
	return src
}
