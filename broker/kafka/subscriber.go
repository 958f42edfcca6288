package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Subscriber consumes topics in Kafka consumer groups. It implements
// broker.Subscriber and is safe for concurrent use: each Subscribe call is
// one group member with its own connections. Create it with NewSubscriber
// and Close it when done.
//
// Guarantees:
//
//   - At least once. An offset is committed only after the handler of its
//     message and of every earlier message of the partition returned nil
//     (the highest contiguous completed offset), so a commit never passes a
//     message that was not processed.
//   - Order: with OrderPerKey (the default) messages of one key are handled
//     one at a time in offset order while other keys of the same partition
//     run in parallel; with OrderPerPartition one message of a partition runs
//     at a time. Partitions always run in parallel, up to
//     Subscription.Concurrency handlers per member.
//   - Failures do not spin: a failed message is retried in place after
//     SubscriberConfig.RetryBackoff, with Delivery.Attempt incremented and
//     Redelivered set, keeping its key (or partition) blocked so order holds.
//   - Rebalances use the cooperative-sticky balancer. When a partition is
//     revoked the member stops starting its messages, lets running handlers
//     finish (and runs the messages below the highest one started, so no
//     completed message lies past the commit point), commits, and only then
//     releases it. Shutdown does the same for every partition. Without
//     handler errors or crashes, no message is handed to a group twice.
//
// A message redelivered after a crash or a lost session (a member kicked
// out for missing RebalanceTimeout) arrives with Attempt 1: Kafka keeps no
// delivery count. Consumers deduplicate on Message.ID.
type Subscriber struct {
	cfg   SubscriberConfig
	admin *Admin

	mu      sync.Mutex
	closed  bool
	done    chan struct{}
	members sync.WaitGroup
	active  map[[2]string]int // {topic, group} -> running members

	reg   metric.Registration
	spans telemetry.Spans
}

var _ broker.Subscriber = (*Subscriber)(nil)

// NewSubscriber validates cfg and creates a subscriber. It registers the
// consumer-lag gauge (see Lag) with cfg.MeterProvider. It does not contact
// the cluster; Subscribe does.
func NewSubscriber(cfg SubscriberConfig) (*Subscriber, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	admin, err := NewAdmin(cfg.Config)
	if err != nil {
		return nil, err
	}
	s := &Subscriber{cfg: cfg, admin: admin, done: make(chan struct{}), active: make(map[[2]string]int),
		spans: telemetry.NewSpans(cfg.TracerProvider, scope, system)}
	if err := s.registerMetrics(); err != nil {
		admin.Close()
		return nil, err
	}
	return s, nil
}

// LagMetric is the name of the gauge the Subscriber reports: records of a
// partition not yet processed by a group (high watermark minus committed
// offset), with attributes messaging.destination.name (topic),
// messaging.consumer.group.name and messaging.destination.partition.id. It
// is observed for every topic and group with a running Subscribe call.
const LagMetric = "steadfast.kafka.consumer.lag"

func (s *Subscriber) registerMetrics() error {
	meter := telemetry.Meter(s.cfg.MeterProvider, scope)
	gauge, err := meter.Int64ObservableGauge(LagMetric,
		metric.WithDescription("Records of a partition not yet processed by a consumer group (high watermark minus committed offset)."),
		metric.WithUnit("{record}"))
	if err != nil {
		return fmt.Errorf("kafka: lag gauge: %w", err)
	}
	s.reg, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		return s.observeLag(ctx, o, gauge)
	}, gauge)
	if err != nil {
		return fmt.Errorf("kafka: lag gauge callback: %w", err)
	}
	return nil
}

func (s *Subscriber) observeLag(ctx context.Context, o metric.Observer, gauge metric.Int64ObservableGauge) error {
	s.mu.Lock()
	pairs := make([][2]string, 0, len(s.active))
	for k := range s.active {
		pairs = append(pairs, k)
	}
	s.mu.Unlock()
	var errs []error
	for _, tg := range pairs {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lags, err := s.Lag(cctx, tg[0], tg[1])
		cancel()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range lags {
			o.ObserveInt64(gauge, l.Lag, metric.WithAttributes(
				attribute.String("messaging.system", "kafka"),
				attribute.String("messaging.destination.name", l.Topic),
				attribute.String("messaging.consumer.group.name", tg[1]),
				attribute.Int("messaging.destination.partition.id", int(l.Partition)),
			))
		}
	}
	return errors.Join(errs...)
}

// Lag reports, for every partition of topic, how many records group has
// not yet processed: the high watermark minus the committed offset. The
// same figures feed the LagMetric gauge.
func (s *Subscriber) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	return s.admin.Lag(ctx, topic, group)
}

// Close stops every running Subscribe call (each drains its handlers,
// commits and leaves its group, then returns broker.ErrClosed), waits for
// them, and releases the subscriber's resources. Close is idempotent.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.members.Wait()
	if s.reg != nil {
		_ = s.reg.Unregister()
	}
	s.admin.Close()
	return nil
}

// Subscribe joins sub.Group on sub.Topic as a new member and runs h until ctx
// is cancelled (it returns nil) or the Subscriber is closed (it returns an
// error wrapping broker.ErrClosed). Bad arguments fail at once with the
// broker package's sentinels; a topic that does not exist fails with
// ErrUnknownTopic and a cluster that does not answer within StartTimeout
// with ErrUnreachable. After the start, broker outages are retried for as
// long as ctx lives.
//
// Handlers receive a context that is not cancelled with ctx: on shutdown or
// revocation they get DrainTimeout to finish before it is cancelled, and
// their results are recorded whenever they return. A handler that panics
// counts as failed and is retried.
func (s *Subscriber) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	sub = brokerimpl.WithDefaults(sub)
	if err := ctx.Err(); err != nil {
		return nil
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	s.members.Add(1)
	s.mu.Unlock()
	defer s.members.Done()

	if !s.cfg.AllowAutoTopicCreation {
		if _, err := s.admin.Partitions(ctx, sub.Topic); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
		}
	}

	key := [2]string{sub.Topic, sub.Group}
	s.mu.Lock()
	s.active[key]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.active[key]--; s.active[key] == 0 {
			delete(s.active, key)
		}
		s.mu.Unlock()
	}()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-runCtx.Done():
		}
	}()

	m, err := newMember(s, sub, h, ctx, new(recordPool))
	if err != nil {
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
	}
	m.run(runCtx)
	if ctx.Err() == nil {
		return fmt.Errorf("kafka: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	return nil
}
