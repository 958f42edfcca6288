package kafkadlq

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

// Config configures a Consumer.
type Config struct {
	// Subscriber configures the main-topic subscriber. Its Config (seed
	// brokers, client ID, TLS and SASL options, logger, meter provider)
	// serves every client the Consumer creates. Subscriber.Brokers is
	// required.
	//
	// With dlq.RetryRedeliver and no RetryBackoff of its own, the
	// subscriber retries failed messages in place after DLQ.Policy's
	// backoff: per-key order is kept without a worker sleeping.
	Subscriber kafka.SubscriberConfig
	// Publisher publishes dead letters and retries. Default:
	// DLQ.Publisher, else a kafka.Publisher on Subscriber.Config, closed by
	// Close. (rabbitdlq.Config.Publisher has the same precedence.)
	Publisher broker.Publisher
	// DLQ configures the retry policy, classification and where retries
	// wait (DLQ.Retries). Its Publisher is replaced by Publisher when that
	// is set; its Subscriber and RetrySubscriber are set by NewConsumer
	// when nil; its Logger and MeterProvider default to Subscriber's.
	DLQ dlq.Config

	// TopicSpec is what Subscribe creates missing retry and dead-letter
	// topics with (its Name is ignored). Zero Partitions: the partition
	// count of the subscribed topic; zero ReplicationFactor: the cluster's
	// default.
	TopicSpec kafka.TopicSpec
	// NoCreateTopics makes Subscribe check that the retry and dead-letter
	// topics exist instead of creating the missing ones, for clusters
	// where topics are provisioned apart (the consumer's principal lacks
	// the CREATE permission). Default false: Subscribe creates them.
	NoCreateTopics bool
}

// Consumer consumes Kafka topics with bounded retries and dead-lettering.
// It is a dlq.Consumer (Subscribe, Middleware, Topics) on Kafka clients it
// creates, plus CreateTopics. Create it with NewConsumer and Close it when
// done.
//
// With dlq.RetryTopics, each retry topic is consumed by a subscriber with
// kafka.OrderPerPartition: a message waits at the head of its partition
// until it is due, and since a retry topic's messages are appended in
// failure order with equal delays, the messages behind it are due later
// anyway; other partitions are not held up. Give Subscription.Concurrency
// at least the partition count of the retry topics so that every
// partition's head can wait at the same time.
type Consumer struct {
	*dlq.Consumer
	admin       *kafka.Admin
	main, retry *kafka.Subscriber
	pub         *kafka.Publisher // owned, or nil
	spec        kafka.TopicSpec
	noCreate    bool
}

// RetrySubscriberConfig returns cfg as the retry-topic subscriber needs it:
// kafka.OrderPerPartition, and a short retry backoff (50ms doubling, at most
// 1s) so a message handed back with dlq.ErrNotDue is looked at again soon
// after it becomes due.
func RetrySubscriberConfig(cfg kafka.SubscriberConfig) kafka.SubscriberConfig {
	cfg.Ordering = kafka.OrderPerPartition
	cfg.RetryBackoff = broker.Backoff{Initial: 50 * time.Millisecond, Max: time.Second, Jitter: -1}
	return cfg
}

// NewConsumer validates cfg and creates the Kafka clients. It does not
// contact the cluster; Subscribe and CreateTopics do.
func NewConsumer(cfg Config) (*Consumer, error) {
	if cfg.DLQ.Logger == nil {
		cfg.DLQ.Logger = cfg.Subscriber.Logger
	}
	if cfg.DLQ.MeterProvider == nil {
		cfg.DLQ.MeterProvider = cfg.Subscriber.MeterProvider
	}
	if err := cfg.DLQ.Policy.Validate(); err != nil {
		return nil, err
	}
	mainCfg := cfg.Subscriber
	if cfg.DLQ.Retries == dlq.RetryRedeliver && mainCfg.RetryBackoff == (broker.Backoff{}) {
		// Filled in: a zero Backoff would mean the subscriber's own default.
		mainCfg.RetryBackoff = cfg.DLQ.Policy.Backoff.WithDefaults()
	}
	c := &Consumer{spec: cfg.TopicSpec, noCreate: cfg.NoCreateTopics}
	var err error
	if c.admin, err = kafka.NewAdmin(cfg.Subscriber.Config); err != nil {
		return nil, err
	}
	if c.main, err = kafka.NewSubscriber(mainCfg); err != nil {
		c.Close()
		return nil, err
	}
	if cfg.DLQ.Subscriber == nil {
		cfg.DLQ.Subscriber = c.main
	}
	if cfg.DLQ.Retries == dlq.RetryTopics && cfg.DLQ.RetrySubscriber == nil {
		if c.retry, err = kafka.NewSubscriber(RetrySubscriberConfig(cfg.Subscriber)); err != nil {
			c.Close()
			return nil, err
		}
		cfg.DLQ.RetrySubscriber = c.retry
	}
	if cfg.Publisher != nil {
		cfg.DLQ.Publisher = cfg.Publisher
	}
	if cfg.DLQ.Publisher == nil {
		if c.pub, err = kafka.NewPublisher(kafka.PublisherConfig{Config: cfg.Subscriber.Config}); err != nil {
			c.Close()
			return nil, err
		}
		cfg.DLQ.Publisher = c.pub
	}
	if c.Consumer, err = dlq.New(cfg.DLQ); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Subscribe makes sure the retry topics (with dlq.RetryTopics) and the
// dead-letter topic of sub.Topic and sub.Group exist, creating the missing
// ones with Config.TopicSpec unless Config.NoCreateTopics is set, then
// consumes sub (see dlq.Consumer.Subscribe). A topic that is missing and
// cannot be created (or, with NoCreateTopics, is missing) fails Subscribe
// at once with an error naming it and wrapping dlq.ErrNotFound and
// kafka.ErrUnknownTopic, rather than leaving a failing message's key
// blocked on a dead-letter publish that can never succeed.
func (c *Consumer) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	if err := c.ensureTopics(ctx, sub.Topic, sub.Group); err != nil {
		return err
	}
	return c.Consumer.Subscribe(ctx, sub, h)
}

// ensureTopics checks the topics Subscribe publishes to and creates the
// missing ones unless told not to.
func (c *Consumer) ensureTopics(ctx context.Context, topic, group string) error {
	var missing []string
	for _, name := range c.Topics(topic, group) {
		if _, err := c.admin.Partitions(ctx, name); err != nil {
			if !errors.Is(err, kafka.ErrUnknownTopic) {
				return fmt.Errorf("kafkadlq: check topic %q: %w", name, err)
			}
			missing = append(missing, name)
		}
	}
	switch {
	case len(missing) == 0:
		return nil
	case c.noCreate:
		return fmt.Errorf("kafkadlq: retry and dead-letter topics %q of %q/%q do not exist (Config.NoCreateTopics is set: create them with Consumer.CreateTopics or your provisioning): %w: %w",
			missing, topic, group, dlq.ErrNotFound, kafka.ErrUnknownTopic)
	}
	if err := CreateTopics(ctx, c.admin, topic, c.spec, missing...); err != nil {
		return fmt.Errorf("kafkadlq: retry and dead-letter topics %q of %q/%q do not exist and could not be created: %w: %w: %w",
			missing, topic, group, dlq.ErrNotFound, kafka.ErrUnknownTopic, err)
	}
	return nil
}

// CreateTopics creates the retry topics (with dlq.RetryTopics) and the
// dead-letter topic of topic and group, leaving those that exist alone.
// A zero spec.Partitions means the partition count of topic. spec.Name is
// ignored.
func (c *Consumer) CreateTopics(ctx context.Context, topic, group string, spec kafka.TopicSpec) error {
	return CreateTopics(ctx, c.admin, topic, spec, c.Topics(topic, group)...)
}

// CreateTopics creates the named topics with spec (its Name ignored),
// leaving those that exist alone. A zero spec.Partitions means the
// partition count of like, which must exist then.
func CreateTopics(ctx context.Context, admin *kafka.Admin, like string, spec kafka.TopicSpec, names ...string) error {
	if spec.Partitions == 0 {
		n, err := admin.Partitions(ctx, like)
		if err != nil {
			return fmt.Errorf("kafkadlq: partitions of %q: %w", like, err)
		}
		spec.Partitions = int32(n)
	}
	for _, name := range names {
		spec.Name = name
		if err := admin.CreateTopic(ctx, spec); err != nil && !errors.Is(err, kafka.ErrTopicExists) {
			return fmt.Errorf("kafkadlq: %w", err)
		}
	}
	return nil
}

// Close stops running Subscribe calls (they drain and return
// broker.ErrClosed) and closes the clients NewConsumer created.
func (c *Consumer) Close() error {
	var errs []error
	for _, s := range []*kafka.Subscriber{c.main, c.retry} {
		if s != nil {
			errs = append(errs, s.Close())
		}
	}
	if c.pub != nil {
		errs = append(errs, c.pub.Close())
	}
	if c.admin != nil {
		c.admin.Close()
	}
	return errors.Join(errs...)
}
