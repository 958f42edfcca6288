package rabbitdlq

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

// Config configures a Consumer.
type Config struct {
	// Conn carries the subscriber, the declarations and, unless Publisher is
	// set, the dead-letter publisher. Required.
	Conn *rabbitmq.Conn
	// Subscriber configures the subscriber. With Groups.Retry set, failed
	// messages wait in the adapter's TTL/dead-letter-exchange retry chain
	// (DLQ.Retries must then be dlq.RetryRedeliver). Without it,
	// Subscriber.MaxAttempts must be zero: the middleware alone decides
	// when a message is dead-lettered. With dlq.RetryRedeliver and no
	// RetryBackoff of its own, the subscriber retries after DLQ.Policy's
	// backoff.
	Subscriber rabbitmq.SubscriberConfig
	// Publisher publishes dead letters. Default: DLQ.Publisher, else a
	// rabbitmq.Publisher on Conn (NoDeclare, so a missing dead-letter exchange is an error, never
	// a silent declaration), closed by Close.
	Publisher broker.Publisher
	// DeadLetterQueue is the template of dead-letter queues: every field but
	// Name applies. Default: a durable classic queue. A quorum queue here
	// needs no delivery limit: the Inspector reads messages without
	// acknowledging them, which counts as a delivery.
	DeadLetterQueue rabbitmq.Queue
	// DLQ configures the retry policy, classification and where retries
	// wait (dlq.RetryInProcess or dlq.RetryRedeliver; retry topics are a
	// Kafka pattern, the retry chain is RabbitMQ's). Its Publisher and
	// Subscriber are set by NewConsumer. With Subscriber.Groups.Retry, a
	// zero Policy.MaxAttempts means the chain's attempts, and a larger one
	// is an error (the chain would park the message first).
	DLQ dlq.Config
}

// Consumer consumes RabbitMQ topics with bounded retries and
// dead-lettering. It is a dlq.Consumer (Subscribe, Middleware, Topics) on a
// rabbitmq.Subscriber it creates, plus the declarations of the dead-letter
// exchanges and queues. Create it with NewConsumer and Close it when done.
//
// Dead letters go to the exchange DLQ.DeadLetterTopic names (by default
// "<topic>.<group>.dlq"), bound with "#" to a queue of the same name.
type Consumer struct {
	*dlq.Consumer
	conn *rabbitmq.Conn
	sub  *rabbitmq.Subscriber
	pub  *rabbitmq.Publisher // owned, or nil
	dlqQ rabbitmq.Queue
}

// RetryChain returns the retry chain that waits p's backoffs: one retry
// queue per retry, with delays p.Delay(1) ... p.Delay(MaxAttempts-1)
// without jitter (a queue's TTL is one value) and at least 1ms. It returns
// nil when p allows a single attempt.
func RetryChain(p dlq.Policy) *rabbitmq.RetryChain {
	p = p.WithDefaults()
	p.Jitter = -1
	if p.MaxAttempts < 2 {
		return nil
	}
	delays := make([]time.Duration, p.MaxAttempts-1)
	for i := range delays {
		delays[i] = max(p.Delay(i+1), time.Millisecond)
	}
	return &rabbitmq.RetryChain{Delays: delays}
}

// NewConsumer validates cfg and creates the subscriber and, unless given,
// the publisher. It declares nothing; Setup and Subscribe do.
func NewConsumer(cfg Config) (*Consumer, error) {
	if cfg.Conn == nil {
		return nil, fmt.Errorf("%w: Config.Conn is nil", dlq.ErrInvalidConfig)
	}
	if err := cfg.DLQ.Policy.Validate(); err != nil {
		return nil, err
	}
	sc := cfg.Subscriber
	switch chain := sc.Groups.Retry; {
	case cfg.DLQ.Retries == dlq.RetryTopics:
		return nil, fmt.Errorf("%w: dlq.RetryTopics is not supported on RabbitMQ; use dlq.RetryRedeliver with Subscriber.Groups.Retry (the TTL retry chain)", dlq.ErrInvalidConfig)
	case chain != nil:
		if cfg.DLQ.Retries != dlq.RetryRedeliver {
			return nil, fmt.Errorf("%w: Subscriber.Groups.Retry needs DLQ.Retries = dlq.RetryRedeliver, not %v", dlq.ErrInvalidConfig, cfg.DLQ.Retries)
		}
		limit := chain.MaxAttempts() * max(sc.MaxAttempts, 1)
		if cfg.DLQ.Policy.MaxAttempts == 0 {
			cfg.DLQ.Policy.MaxAttempts = limit
		}
		if cfg.DLQ.Policy.MaxAttempts > limit {
			return nil, fmt.Errorf("%w: Policy.MaxAttempts %d exceeds the %d attempts of the retry chain, which would park the message without an envelope",
				dlq.ErrInvalidConfig, cfg.DLQ.Policy.MaxAttempts, limit)
		}
	case sc.MaxAttempts != 0:
		return nil, fmt.Errorf("%w: Subscriber.MaxAttempts %d without a retry chain lets the broker drop messages the middleware has not dead-lettered; leave it zero",
			dlq.ErrInvalidConfig, sc.MaxAttempts)
	case cfg.DLQ.Retries == dlq.RetryRedeliver && sc.RetryBackoff == (broker.Backoff{}):
		// Filled in: a zero Backoff would mean the subscriber's own default.
		sc.RetryBackoff = cfg.DLQ.Policy.Backoff.WithDefaults()
	}
	if cfg.DLQ.Logger == nil {
		cfg.DLQ.Logger = sc.Logger
	}
	c := &Consumer{conn: cfg.Conn, dlqQ: cfg.DeadLetterQueue}
	var err error
	if c.sub, err = rabbitmq.NewSubscriber(cfg.Conn, sc); err != nil {
		return nil, err
	}
	pub := cfg.Publisher
	if pub == nil {
		pub = cfg.DLQ.Publisher
	}
	if pub == nil {
		if c.pub, err = rabbitmq.NewPublisher(cfg.Conn, rabbitmq.PublisherConfig{NoDeclare: true, Logger: sc.Logger}); err != nil {
			_ = c.sub.Close()
			return nil, err
		}
		pub = c.pub
	}
	cfg.DLQ.Publisher = cleanPublisher{pub}
	cfg.DLQ.Subscriber = c.sub
	if c.Consumer, err = dlq.New(cfg.DLQ); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// DeadLetterTopology returns the dead-letter exchange name (a durable
// topic exchange) and the queue q named name bound to it with "#".
func DeadLetterTopology(name string, q rabbitmq.Queue) rabbitmq.Topology {
	q.Name = name
	return rabbitmq.Topology{
		Exchanges: []rabbitmq.Exchange{{Name: name}},
		Queues:    []rabbitmq.Queue{q},
		Bindings:  []rabbitmq.Binding{{Exchange: name, Queue: name, Key: "#"}},
	}
}

// Topology returns what Setup declares: the topic's exchange, the groups'
// queues with their retry chains, and their dead-letter exchanges and
// queues.
func (c *Consumer) Topology(topic string, groups ...string) (rabbitmq.Topology, error) {
	t, err := c.sub.Topology(topic, groups...)
	if err != nil {
		return t, err
	}
	for _, g := range groups {
		ts := c.Topics(topic, g)
		t = t.Merge(DeadLetterTopology(ts[len(ts)-1], c.dlqQ))
	}
	return t, t.Validate()
}

// Setup declares Topology(topic, groups...), so that messages published
// before the first Subscribe call are kept. It is idempotent, and the
// declarations are repeated after every reconnect.
func (c *Consumer) Setup(ctx context.Context, topic string, groups ...string) error {
	t, err := c.Topology(topic, groups...)
	if err != nil {
		return err
	}
	if err := c.conn.Declare(ctx, t); err != nil {
		return fmt.Errorf("rabbitdlq: %w", err)
	}
	return nil
}

// Subscribe declares sub's topology (Setup) and consumes it with h wrapped
// in the retry and dead-letter middleware (see dlq.Consumer.Subscribe).
func (c *Consumer) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	if err := c.Setup(ctx, sub.Topic, sub.Group); err != nil {
		return err
	}
	return c.Consumer.Subscribe(ctx, sub, h)
}

// Close stops running Subscribe calls (they drain and return
// broker.ErrClosed) and closes the publisher NewConsumer created. The
// connection stays open.
func (c *Consumer) Close() error {
	errs := []error{c.sub.Close()}
	if c.pub != nil {
		errs = append(errs, c.pub.Close())
	}
	return errors.Join(errs...)
}

// brokerHeader reports the headers RabbitMQ adds when it dead-letters or
// redelivers a message. They describe one trip through the broker and
// are dropped from dead letters and replays: the envelope says what
// happened, and a replay starts a new history.
func brokerHeader(k string) bool {
	return k == rabbitmq.HeaderDeath || k == rabbitmq.HeaderDeliveryCount ||
		strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

// cleanPublisher drops broker headers from the messages it publishes.
type cleanPublisher struct{ broker.Publisher }

// MaxMessageBytes reports the wrapped publisher's size limit, or 0 when it
// reports none, so that dead letters are made to fit it.
func (p cleanPublisher) MaxMessageBytes() int {
	if l, ok := p.Publisher.(broker.SizeLimiter); ok {
		return l.MaxMessageBytes()
	}
	return 0
}

func (p cleanPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	out, copied := msgs, false
	for i, m := range msgs {
		if !hasBrokerHeader(m.Headers) {
			continue
		}
		if !copied {
			out, copied = append([]broker.Message(nil), msgs...), true
		}
		h := maps.Clone(m.Headers)
		maps.DeleteFunc(h, func(k, _ string) bool { return brokerHeader(k) })
		out[i].Headers = h
	}
	return p.Publisher.Publish(ctx, out...)
}

func hasBrokerHeader(h map[string]string) bool {
	for k := range h {
		if brokerHeader(k) {
			return true
		}
	}
	return false
}
