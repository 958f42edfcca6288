// Package memory is an in-process broker: the zero-infrastructure backend for
// examples and for unit-testing handlers.
//
// Import it as brokermem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import brokermem "github.com/steadfast-go/steadfast/broker/memory"
//
// It behaves like a persistent broker with consumer groups, inside one
// process: every group receives every message of a topic; the members of a
// group (each Subscribe call) compete for messages; messages sharing a key are
// handled one at a time in publish order while different keys run in
// parallel; a handler error redelivers the message with a growing
// Delivery.Attempt after a backoff, keeping its key blocked so order holds;
// messages published while no member runs wait for the next one. A group that
// subscribes for the first time starts at the first message of the topic, as
// a Kafka group with auto.offset.reset=earliest does.
//
// Messages are copied on Publish and again for each delivery, so neither a
// publisher that reuses its buffers nor a handler that edits its delivery
// changes what anyone else receives.
//
// Acknowledgement is exact: a handler that returned nil is never redelivered,
// so the broker produces no duplicates of its own. Nothing survives the
// process; every published message stays in memory for the Broker's life,
// which is what tests and examples want and what a production service does
// not.
package memory

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// ErrInvalidConfig is wrapped by Config.Validate's errors, which Publish and
// Subscribe of a Broker made with that Config return.
var ErrInvalidConfig = errors.New("broker/memory: invalid config")

// DefaultDrainTimeout is the default Config.DrainTimeout.
const DefaultDrainTimeout = 30 * time.Second

// DefaultRedeliveryBackoff returns the schedule used when
// Config.RedeliveryBackoff is zero: 5ms after the first failure, doubling,
// at most 1s, without jitter.
func DefaultRedeliveryBackoff() broker.Backoff {
	return broker.Backoff{Initial: 5 * time.Millisecond, Max: time.Second, Jitter: -1}
}

// Config tunes a Broker. The zero value is ready to use; zero fields take
// the documented defaults and negative values are invalid.
type Config struct {
	// MaxMessageBytes is the largest Message.Size accepted by Publish.
	// Default broker.DefaultMaxMessageBytes.
	MaxMessageBytes int
	// RedeliveryBackoff is how long a failed message waits before its next
	// delivery, by the number of deliveries so far (1 after the first
	// failure). Zero means DefaultRedeliveryBackoff(); otherwise zero fields
	// take broker.Backoff's defaults.
	RedeliveryBackoff broker.Backoff
	// DrainTimeout bounds how long a stopping subscription waits for running
	// handlers before cancelling their context. Their results are still
	// recorded when they return. Default DefaultDrainTimeout (30s).
	DrainTimeout time.Duration
	// TracerProvider receives a "publish <topic>" producer span per Publish
	// call and a "process <topic>" consumer span per handler call, parented
	// by the message's traceparent, which Publish sets from its ctx.
	// Default: the OpenTelemetry global provider.
	TracerProvider trace.TracerProvider
}

// Validate reports a field out of range with an error wrapping
// ErrInvalidConfig (and broker.ErrInvalidBackoff for RedeliveryBackoff).
func (c Config) Validate() error {
	switch {
	case c.MaxMessageBytes < 0:
		return fmt.Errorf("%w: MaxMessageBytes %d < 0", ErrInvalidConfig, c.MaxMessageBytes)
	case c.DrainTimeout < 0:
		return fmt.Errorf("%w: DrainTimeout %v < 0", ErrInvalidConfig, c.DrainTimeout)
	}
	if err := c.RedeliveryBackoff.Validate(); err != nil {
		return fmt.Errorf("%w: RedeliveryBackoff: %w", ErrInvalidConfig, err)
	}
	return nil
}

// Broker is an in-process broker. It implements broker.Publisher and
// broker.Subscriber and is safe for concurrent use. Create it with New.
type Broker struct {
	cfg    Config
	bad    error // Config.Validate's error: every call fails with it
	spans  telemetry.Spans
	mu     sync.Mutex
	topics map[string]*topic
	closed bool
	done   chan struct{}
}

var (
	_ broker.Publisher   = (*Broker)(nil)
	_ broker.Subscriber  = (*Broker)(nil)
	_ broker.SizeLimiter = (*Broker)(nil)
)

// New returns an empty broker. It never fails, so a test can build one in
// an expression; a cfg that Config.Validate rejects makes every Publish and
// Subscribe call of the broker return that error.
func New(cfg Config) *Broker {
	b := &Broker{topics: make(map[string]*topic), done: make(chan struct{})}
	if b.bad = cfg.Validate(); b.bad != nil {
		return b
	}
	cfg.MaxMessageBytes = cmp.Or(cfg.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	cfg.RedeliveryBackoff = cmp.Or(cfg.RedeliveryBackoff, DefaultRedeliveryBackoff())
	cfg.DrainTimeout = cmp.Or(cfg.DrainTimeout, DefaultDrainTimeout)
	b.cfg = cfg
	b.spans = telemetry.NewSpans(cfg.TracerProvider, "broker/memory", "memory")
	return b
}

type topic struct {
	log    []broker.Message
	groups map[string]*group
}

// Publish appends msgs to their topics and makes them available to every
// group. It returns broker.ErrClosed after Close and ctx.Err() when ctx is
// already done; otherwise all messages are accepted atomically. Messages
// without a traceparent header get the publish span's.
func (b *Broker) Publish(ctx context.Context, msgs ...broker.Message) (err error) {
	if b.bad != nil {
		return b.bad
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	msgs, err = brokerimpl.Normalize(msgs, b.cfg.MaxMessageBytes)
	if err != nil {
		return err
	}
	_, span := b.spans.Publish(ctx, msgs)
	defer func() { telemetry.End(span, err) }()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return broker.ErrClosed
	}
	touched := make(map[*group]struct{})
	for _, m := range msgs {
		m = clone(m)
		t := b.topic(m.Topic)
		off := int64(len(t.log))
		t.log = append(t.log, m)
		for _, g := range t.groups {
			g.enqueue(m, off)
			touched[g] = struct{}{}
		}
	}
	for g := range touched {
		g.broadcast()
	}
	return nil
}

// MaxMessageBytes returns the largest Message.Size Publish accepts
// (Config.MaxMessageBytes). It implements broker.SizeLimiter.
func (b *Broker) MaxMessageBytes() int { return b.cfg.MaxMessageBytes }

// Published returns a copy of every message published to topic so far, in
// publish order. Tests use it to assert what a component sent.
func (b *Broker) Published(topic string) []broker.Message {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[topic]
	if t == nil {
		return nil
	}
	out := make([]broker.Message, len(t.log))
	for i, m := range t.log {
		out[i] = clone(m)
	}
	return out
}

// clone copies m's payload and headers, as a network broker would: what a
// publisher changes after Publish, or a handler changes in its delivery,
// never reaches another reader of the message.
func clone(m broker.Message) broker.Message {
	if m.Payload != nil {
		m.Payload = bytes.Clone(m.Payload)
	}
	if m.Headers != nil {
		m.Headers = maps.Clone(m.Headers)
	}
	return m
}

// Pending returns how many messages of topic the group has not yet
// acknowledged, in flight included. A group that never subscribed has
// every message of the topic pending.
func (b *Broker) Pending(topic, group string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.topics[topic]
	if t == nil {
		return 0
	}
	if g := t.groups[group]; g != nil {
		return g.pending
	}
	return len(t.log)
}

// Close stops the broker: Publish returns broker.ErrClosed, and running
// Subscribe calls drain their in-flight handlers and return
// broker.ErrClosed. Close is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.done)
	}
	return nil
}

// topic returns the named topic, creating it. Callers hold b.mu.
func (b *Broker) topic(name string) *topic {
	t := b.topics[name]
	if t == nil {
		t = &topic{groups: make(map[string]*group)}
		b.topics[name] = t
	}
	return t
}

// Subscribe joins sub.Group on sub.Topic and runs h with up to
// sub.Concurrency handlers at once until ctx is cancelled (returns nil) or the
// broker is closed (returns broker.ErrClosed). See package doc for the
// delivery guarantees.
func (b *Broker) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if b.bad != nil {
		return b.bad
	}
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	sub = brokerimpl.WithDefaults(sub)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return broker.ErrClosed
	}
	t := b.topic(sub.Topic)
	g := t.groups[sub.Group]
	if g == nil {
		g = newGroup(&b.mu, sub.Group)
		for off, m := range t.log {
			g.enqueue(m, int64(off))
		}
		t.groups[sub.Group] = g
	}
	b.mu.Unlock()

	var wg sync.WaitGroup
	for range sub.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.work(ctx, g, h)
		}()
	}
	wg.Wait()
	select {
	case <-b.done:
		if ctx.Err() == nil {
			return fmt.Errorf("broker/memory: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
		}
	default:
	}
	return nil
}

// work takes deliveries from g and runs h until ctx ends or the broker
// closes. A delivery taken is always completed, whatever happens to ctx.
func (b *Broker) work(ctx context.Context, g *group, h broker.Handler) {
	for {
		e, ok := g.take(ctx, b.done)
		if !ok {
			return
		}
		err := b.run(ctx, h, e)
		g.complete(e, err, b.cfg.RedeliveryBackoff.Delay)
	}
}

// run calls h for e with a context that survives ctx's cancellation for up to
// DrainTimeout, and turns a handler panic into an error so the message is
// redelivered instead of lost.
func (b *Broker) run(ctx context.Context, h broker.Handler, e *entry) (err error) {
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(b.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-hctx.Done():
		}
	})
	defer stop()
	d := broker.Delivery{
		Message:     clone(e.msg),
		Attempt:     e.attempt,
		Redelivered: e.attempt > 1,
		Group:       e.group,
		Partition:   -1,
		Offset:      e.offset,
	}
	sctx, span := b.spans.Process(hctx, d)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("broker/memory: handler panicked: %v", r)
		}
		telemetry.End(span, err)
	}()
	return h(sctx, d)
}
