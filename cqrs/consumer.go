package cqrs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// DefaultKeep is how long a Consumer's store remembers the IDs of applied
// events when ConsumerConfig.Keep is zero: longer than any redelivery a
// broker makes in practice (a consumer group rewound to a committed offset,
// a requeued message, a replayed dead letter).
const DefaultKeep = 7 * 24 * time.Hour

// MaxEventIDBytes is the longest message ID a Consumer records. A longer
// (or empty) one is refused like an undecodable message; under Skip it is
// acknowledged without being applied or recorded.
const MaxEventIDBytes = 512

// Once is what OnceStore.ApplyOnce records with a group of events.
type Once struct {
	// IDs are the event IDs of the group, each non-empty and listed once.
	IDs []string
	// Skipped are events of IDs the projection leaves out (poison or
	// undecodable). They are recorded and counted, like applied events,
	// only when their ID was not recorded before.
	Skipped []SkippedEvent
	// Keep is how long the IDs stay recorded; after that a redelivery of
	// one of them applies again.
	Keep time.Duration
}

// Validate reports an empty or repeated ID, a skipped event whose ID is not
// among IDs, or a Keep below 1ms, with an error wrapping ErrInvalidConfig.
// Stores call it first.
func (o Once) Validate() error {
	seen := make(map[string]bool, len(o.IDs))
	for _, id := range o.IDs {
		if id == "" || seen[id] {
			return fmt.Errorf("%w: empty or repeated event ID %q", ErrInvalidConfig, id)
		}
		seen[id] = true
	}
	for _, k := range o.Skipped {
		if !seen[k.EventID] {
			return fmt.Errorf("%w: skipped event %q is not among the IDs", ErrInvalidConfig, k.EventID)
		}
	}
	if o.Keep < time.Millisecond {
		return fmt.Errorf("%w: Keep %v below 1ms", ErrInvalidConfig, o.Keep)
	}
	return nil
}

// OnceStore is the port of a read-model backend for projections fed by a
// broker subscription (Consumer). A broker delivers each event at least
// once and in order per key only, so instead of a position checkpoint the
// store records the ID of every applied event in the transaction that
// applies it. cqrs/postgres, cqrs/redis and cqrs/memory implement it and
// pass the Consumer cases of cqrs/cqrstest.
type OnceStore[T any] interface {
	StateReader
	// ApplyOnce runs fn and the record of o.IDs for projection version id
	// in one transaction (one MULTI/EXEC on Redis): either both commit or
	// neither. fn receives fresh, aligned with o.IDs: true for the IDs
	// not recorded before, the only events fn may apply. When two
	// instances apply the same ID at once, exactly one of them sees it
	// fresh. A successful ApplyOnce sets the status to running and clears
	// the failure. An error of fn is returned as it is, wrapped by nothing.
	ApplyOnce(ctx context.Context, id ID, o Once, fn func(ctx context.Context, tx T, fresh []bool) error) error
	// Fail records a failure of version id (status, attempts, message),
	// without applying anything.
	Fail(ctx context.Context, id ID, status Status, attempts int, msg string) error
	// Reset clears a stopped or retrying status (see Store.Reset).
	Reset(ctx context.Context, id ID) error
	// Activate makes id the serving version of its name (see
	// Store.Activate).
	Activate(ctx context.Context, id ID, views []string) error
}

// ConsumerConfig tunes a Consumer.
type ConsumerConfig struct {
	// MaxBatch is the largest number of deliveries applied in one
	// transaction. Deliveries handled at the same time (a subscription's
	// Concurrency) share a transaction. Default DefaultBatchSize.
	MaxBatch int
	// Keep is how long applied event IDs are remembered. Default
	// DefaultKeep.
	Keep time.Duration
	// Activate makes the projection's version the serving one
	// (OnceStore.Activate with Projection.Views) when Run starts, so
	// queries of the name (views on PostgreSQL, Top and HGetAll on Redis)
	// read it. A version fed by a broker has no history to catch up on.
	Activate bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider defaults to the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
}

// Consumer applies a projection to events delivered by a broker
// subscription: messages made from stored events by eventsource.ToMessage
// (the event store publishing through the outbox does this).
//
// Guarantees: each event's effect on the read model happens exactly once,
// across redeliveries, duplicates, crashes at any point and any number of
// instances consuming at once, as long as a redelivery comes within
// ConsumerConfig.Keep: the store records the event's ID in the transaction
// that applies it, and a recorded ID is never applied again. A delivery is
// acknowledged only after that transaction committed. Events of one key
// (one stream, with ToMessage) are applied in the order the broker delivers
// them; there is no order across keys, no checkpoint position, no lease
// (the broker's consumer group spreads the work) and no blue/green rebuild
// (a broker does not replay history: rebuild from the event store with a
// Projector). Every event is live (Batch.Live); Batch.From and
// Batch.Checkpoint are zero.
//
// Deliveries handled at the same time are applied in one transaction
// (group commit), up to MaxBatch. When the projection's handler fails on
// such a group, each delivery is applied alone and the poison policy
// applies to the one that fails: Skip records it as skipped and
// acknowledges it; Retry applies it again after Backoff up to MaxAttempts
// times, holding its key; Stop (and Retry after MaxAttempts) records the
// stopped status and returns an error wrapping ErrPoison, and from then on
// every delivery fails with ErrStopped until Store.Reset (Run returns).
// A message that is not an event (no or malformed library headers), or an
// unregistered or undecodable event, is skipped under Skip and otherwise
// fails its delivery with the eventsource error (wrapping
// eventsource.ErrInvalidEvent, *eventsource.UnknownEventError or
// *eventsource.DecodeError), which stops the Consumer like a poison event;
// put a dead-letter middleware (package dlq) in front to park such
// messages instead. Events the Projection's Filter leaves out are
// acknowledged and not recorded.
type Consumer[T any] struct {
	store OnceStore[T]
	reg   *eventsource.Registry
	def   Projection[T]
	cfg   ConsumerConfig
	log   *slog.Logger
	attrs metric.MeasurementOption

	events, skipped metric.Int64Counter

	mu       sync.Mutex
	pending  []*delivery
	flushing bool
	stopped  error
	stop     func(error) // set by Run
}

// delivery is one handled message waiting for its group's commit.
type delivery struct {
	id     string
	events []eventsource.Envelope
	skip   *SkippedEvent
	done   chan error
}

// NewConsumer returns a consumer applying p to events decoded with reg,
// writing to store.
func NewConsumer[T any](store OnceStore[T], reg *eventsource.Registry, p Projection[T], cfg ConsumerConfig) (*Consumer[T], error) {
	switch {
	case store == nil || reg == nil:
		return nil, fmt.Errorf("%w: nil store or registry", ErrInvalidConfig)
	case cfg.MaxBatch < 0 || cfg.Keep < 0:
		return nil, fmt.Errorf("%w: negative MaxBatch or Keep", ErrInvalidConfig)
	}
	p, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultBatchSize
	}
	if cfg.Keep == 0 {
		cfg.Keep = DefaultKeep
	}
	c := &Consumer[T]{store: store, reg: reg, def: p, cfg: cfg, log: telemetry.Logger(cfg.Logger)}
	c.attrs = p.ID.attrs()
	m := telemetry.Meter(cfg.MeterProvider, "cqrs")
	if c.events, err = m.Int64Counter(MetricEvents, metric.WithDescription("events applied by the projection")); err != nil {
		return nil, err
	}
	if c.skipped, err = m.Int64Counter(MetricSkipped, metric.WithDescription("events the projection skipped")); err != nil {
		return nil, err
	}
	return c, nil
}

// ID returns the projection version the consumer applies.
func (c *Consumer[T]) ID() ID { return c.def.ID }

// Run subscribes to s with sub and applies every delivery until ctx is
// done (it returns nil) or the subscription fails (its error). A stored
// stopped status returns ErrStopped at once; a poison event under Stop
// ends the subscription and Run returns the *PoisonError (or the
// eventsource decoding error).
func (c *Consumer[T]) Run(ctx context.Context, sub broker.Subscriber, s broker.Subscription) error {
	st, err := c.store.State(ctx, c.def.ID)
	switch {
	case errors.Is(err, ErrNotFound):
		// Register the version (an empty group), so it can be activated
		// and its state read before the first event arrives.
		if err := c.store.ApplyOnce(ctx, c.def.ID, Once{Keep: c.cfg.Keep}, nil); err != nil {
			return err
		}
	case err != nil:
		return err
	case st.Status == StatusStopped:
		return fmt.Errorf("%w: %s: %s", ErrStopped, c.def.ID, st.Error)
	}
	if c.cfg.Activate {
		if err := c.store.Activate(ctx, c.def.ID, c.def.Views); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.stopped = nil
	c.mu.Unlock()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c.mu.Lock()
	c.stop = cancel
	c.mu.Unlock()
	err = sub.Subscribe(sctx, s, c.Handle)
	c.mu.Lock()
	c.stop = nil
	stopped := c.stopped
	c.mu.Unlock()
	if stopped != nil && ctx.Err() == nil {
		return stopped
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// Handle is the consumer's broker.Handler: it returns once the delivery's
// event is applied (or was applied before) and recorded, or with the error
// that must redeliver it.
func (c *Consumer[T]) Handle(ctx context.Context, d broker.Delivery) error {
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if stopped != nil {
		return fmt.Errorf("%w: %s: %w", ErrStopped, c.def.ID, stopped)
	}
	if d.ID == "" || len(d.ID) > MaxEventIDBytes {
		// Wire data: an ID that cannot be recorded cannot be applied
		// exactly once, and must not reach the store's index either.
		err := fmt.Errorf("%w: message ID of %d bytes: want 1 to %d", eventsource.ErrInvalidEvent, len(d.ID), MaxEventIDBytes)
		if c.def.Poison == Skip {
			c.log.WarnContext(ctx, "cqrs: dropping a message whose ID cannot be recorded", "projection", c.def.ID.String(), "error", err)
			return nil
		}
		return c.halt(ctx, err)
	}
	rec, err := eventsource.FromMessage(d.Message)
	if err == nil && !c.def.Filter.IsZero() && !c.def.Filter.Match(&rec) {
		return nil
	}
	var values []any
	if err == nil {
		values, err = c.reg.Decode(rec)
	}
	it := &delivery{id: d.ID, done: make(chan error, 1)}
	if err != nil {
		if c.def.Poison != Skip {
			return c.halt(ctx, err)
		}
		c.log.WarnContext(ctx, "cqrs: skipping an undecodable message", "projection", c.def.ID.String(), "message_id", d.ID, "error", err)
		it.skip = skippedOfRecord(rec, d.ID, err)
	} else {
		for i, v := range values {
			it.events = append(it.events, eventsource.Envelope{Record: rec, Event: v, Index: i})
		}
	}
	if err := fault.At(ctx, "cqrs.consumer.received", d); err != nil {
		return err
	}
	err = c.submit(ctx, it)
	var he *handlerError
	if !errors.As(err, &he) {
		return err
	}
	return c.poison(ctx, it, rec, he.err)
}

func skippedOfRecord(rec eventsource.Record, id string, err error) *SkippedEvent {
	return &SkippedEvent{Position: rec.Position, StreamID: rec.StreamID, Version: rec.Version, Type: rec.Type, EventID: id, Error: err.Error()}
}

// halt stops the consumer on err (Stop policy), recording the status.
func (c *Consumer[T]) halt(ctx context.Context, err error) error {
	if ferr := c.store.Fail(ctx, c.def.ID, StatusStopped, 1, err.Error()); ferr != nil {
		c.log.ErrorContext(ctx, "cqrs: recording the stopped status failed", "projection", c.def.ID.String(), "error", ferr)
	}
	c.log.ErrorContext(ctx, "cqrs: projection stopped", "projection", c.def.ID.String(), "error", err)
	c.mu.Lock()
	if c.stopped == nil {
		c.stopped = err
	}
	stop := c.stop
	c.mu.Unlock()
	if stop != nil {
		stop(err)
	}
	return err
}

// poison applies the policy to it, whose handler failed with herr when it
// was applied alone.
func (c *Consumer[T]) poison(ctx context.Context, it *delivery, rec eventsource.Record, herr error) error {
	for attempts := 1; ; attempts++ {
		perr := &PoisonError{Projection: c.def.ID, Position: rec.Position.String(), StreamID: rec.StreamID, Type: rec.Type,
			Attempts: attempts, Err: herr}
		switch {
		case c.def.Poison == Skip:
			c.log.WarnContext(ctx, "cqrs: skipping a poison event", "projection", c.def.ID.String(), "message_id", it.id, "error", perr)
			return c.applyAlone(ctx, &delivery{id: it.id, skip: skippedOfRecord(rec, it.id, herr)})
		case c.def.Poison == Retry && attempts < c.def.MaxAttempts:
			if err := c.store.Fail(ctx, c.def.ID, StatusRetrying, attempts, herr.Error()); err != nil {
				return err
			}
			c.log.WarnContext(ctx, "cqrs: projection handler failed; retrying the event", "projection", c.def.ID.String(), "error", perr)
			if err := sleep(ctx, c.def.Backoff.Delay(attempts)); err != nil {
				return err
			}
			err := c.applyAlone(ctx, &delivery{id: it.id, events: it.events})
			var he *handlerError
			if !errors.As(err, &he) {
				return err
			}
			herr = he.err
		default:
			return c.halt(ctx, perr)
		}
	}
}

// submit queues it for the next group commit and waits for its outcome. A
// handler error of a group makes each of its deliveries apply alone; the
// one that fails again returns the *handlerError.
func (c *Consumer[T]) submit(ctx context.Context, it *delivery) error {
	c.mu.Lock()
	c.pending = append(c.pending, it)
	lead := !c.flushing
	c.flushing = true
	c.mu.Unlock()
	if lead {
		c.flush(context.WithoutCancel(ctx))
	}
	select {
	case err := <-it.done:
		if errors.Is(err, errIsolate) {
			return c.applyAlone(ctx, it)
		}
		return err
	case <-ctx.Done():
		// The group may still commit: the redelivery finds the ID
		// recorded and is acknowledged without applying twice.
		return ctx.Err()
	}
}

var errIsolate = errors.New("cqrs: apply alone")

// flush applies pending deliveries in groups until none is left.
func (c *Consumer[T]) flush(ctx context.Context) {
	for {
		c.mu.Lock()
		n := min(len(c.pending), c.cfg.MaxBatch)
		if n == 0 {
			c.flushing = false
			c.mu.Unlock()
			return
		}
		group := c.pending[:n:n]
		c.pending = c.pending[n:]
		c.mu.Unlock()
		err := c.applyGroup(ctx, group)
		var he *handlerError
		if errors.As(err, &he) && len(group) > 1 {
			c.log.WarnContext(ctx, "cqrs: projection handler failed on a group of deliveries; applying them one by one",
				"projection", c.def.ID.String(), "deliveries", len(group), "error", he.err)
			err = errIsolate
		}
		for _, it := range group {
			it.done <- err
		}
	}
}

// applyGroup applies a group for flush. A panic of the handler fails the
// group and hands leadership on (the broker turns the panic of the
// leader's own delivery into an error), so the Consumer does not wedge.
func (c *Consumer[T]) applyGroup(ctx context.Context, group []*delivery) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("cqrs: projection %s: handler panicked: %v", c.def.ID, p)
		}
	}()
	return c.apply(ctx, group)
}

// applyAlone applies one delivery in its own transaction.
func (c *Consumer[T]) applyAlone(ctx context.Context, it *delivery) error {
	return c.apply(ctx, []*delivery{it})
}

// apply applies a group in one ApplyOnce. A delivery whose ID appears
// twice in the group is applied once.
func (c *Consumer[T]) apply(ctx context.Context, group []*delivery) error {
	o := Once{IDs: make([]string, 0, len(group)), Keep: c.cfg.Keep}
	first := make(map[string]int, len(group))
	var items []*delivery
	for _, it := range group {
		if _, dup := first[it.id]; dup {
			continue
		}
		first[it.id] = len(items)
		items = append(items, it)
		o.IDs = append(o.IDs, it.id)
		if it.skip != nil {
			o.Skipped = append(o.Skipped, *it.skip)
		}
	}
	var applied, skipped int
	err := c.store.ApplyOnce(ctx, c.def.ID, o, func(ctx context.Context, tx T, fresh []bool) error {
		if len(fresh) != len(items) {
			return fmt.Errorf("cqrs: store returned %d fresh flags for %d events", len(fresh), len(items))
		}
		b := &Batch{Projection: c.def.ID}
		applied, skipped = 0, 0
		for i, it := range items {
			switch {
			case !fresh[i]:
			case it.skip != nil:
				skipped++
			default:
				b.Events = append(b.Events, it.events...)
				applied++
			}
		}
		if len(b.Events) > 0 {
			if err := c.def.Handle(ctx, tx, b); err != nil {
				return &handlerError{err}
			}
		}
		return fault.At(ctx, "cqrs.consumer.applied", b)
	})
	if err != nil {
		return err
	}
	if applied > 0 {
		c.events.Add(ctx, int64(applied), c.attrs)
	}
	if skipped > 0 {
		c.skipped.Add(ctx, int64(skipped), c.attrs)
	}
	return fault.At(ctx, "cqrs.consumer.committed", group)
}
