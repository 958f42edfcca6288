package cqrs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Projector defaults, for zero Config and Projection fields.
const (
	DefaultBatchSize        = 500
	DefaultTakeoverInterval = time.Second
	DefaultProgressInterval = 10 * time.Second
	DefaultMaxAttempts      = 5
)

// Policy says what a projection does with a poison event: one its handler
// fails on (and, for Stop and Retry, one that cannot be decoded).
type Policy int

const (
	// Stop records the failure (status StatusStopped, the error, the
	// event's position) and stops: Run returns an error wrapping ErrPoison
	// (or the decoding error), and every later Run returns ErrStopped until
	// Store.Reset. Nothing is skipped.
	Stop Policy = iota
	// Skip records the event as skipped (Store: the skipped list, in the
	// transaction that moves the checkpoint past it), logs it, counts it
	// (MetricSkipped) and goes on. Undecodable events are skipped too.
	Skip
	// Retry applies the event again after Backoff, up to MaxAttempts times
	// (the count is stored with the checkpoint, so it survives restarts,
	// and the status reads StatusRetrying meanwhile), then stops as Stop.
	Retry
)

func (p Policy) String() string {
	switch p {
	case Stop:
		return "stop"
	case Skip:
		return "skip"
	case Retry:
		return "retry"
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// Batch is what a projection's handler applies: events of the global log in
// order, all in one transaction with the checkpoint move From → Checkpoint.
type Batch struct {
	// Projection is the version being applied (its read model is where the
	// handler writes: postgres.Tx.Table, redis.Tx.Key).
	Projection ID
	// Events are the decoded, upcast events, in log order.
	Events []eventsource.Envelope
	// From and Checkpoint are the checkpoints before and after the batch.
	From, Checkpoint eventsource.Position
	live             eventsource.Position
}

// Live reports whether e's side effects are due: no version of the
// projection's name has applied e yet. A new version rebuilding history
// gets false for every event the serving version already applied, so side
// effects (messages to send, mail) written in the batch's transaction
// happen exactly once per event across versions, crashes and rebuilds.
func (b *Batch) Live(e eventsource.Envelope) bool { return b.live.Before(e.Position) }

// Replaying reports that no event of the batch is live.
func (b *Batch) Replaying() bool {
	return len(b.Events) == 0 || !b.Live(b.Events[len(b.Events)-1])
}

// Projection defines one version of a read model over the global log.
type Projection[T any] struct {
	ID
	// Handle applies a batch through tx. It runs in the store's
	// transaction: when it fails, nothing of the batch commits. It must
	// not commit or roll back tx, and must write only the version's read
	// model (so versions never disturb each other).
	Handle func(ctx context.Context, tx T, b *Batch) error
	// Views are the read model's tables, for stores that swap versions by
	// pointing views at them (postgres).
	Views []string
	// Filter selects the events (see eventsource.ReaderConfig.Filter).
	Filter eventsource.Filter
	// Poison is the poison-event policy. Default Stop.
	Poison Policy
	// MaxAttempts is how many times Retry applies an event before it
	// stops. Default DefaultMaxAttempts.
	MaxAttempts int
	// Backoff is the wait between Retry attempts, and after transient
	// failures (a lost connection). Zero means broker.Backoff's defaults.
	Backoff broker.Backoff
}

// Config tunes a Projector.
type Config struct {
	// Owner names this instance in the store's lease (shown by the
	// command-line tool). Default "host:pid:random".
	Owner string
	// BatchSize is the number of events read and applied per transaction.
	// Default DefaultBatchSize.
	BatchSize int
	// PollInterval is how often the reader looks for new events when the
	// event store cannot notify. Default eventsource.DefaultPollInterval.
	PollInterval time.Duration
	// TakeoverInterval is how often a standby instance tries to take the
	// lease. Default DefaultTakeoverInterval.
	TakeoverInterval time.Duration
	// Activate makes this version the serving one (Store.Activate) as
	// soon as it has caught up with the log: the blue/green swap of a
	// rebuild. A version that is already active stays so.
	Activate bool
	// Head, when set, gives the lag in events; else a source that
	// implements HeadReader is used.
	Head HeadReader
	// ProgressInterval is how often progress (position, events/s, lag,
	// time left) is logged while the projection is behind. Default
	// DefaultProgressInterval; negative turns the log off.
	ProgressInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MeterProvider defaults to the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
}

// Metrics of a Projector. Each carries the attributes
// steadfast.projection (name) and steadfast.projection.version.
const (
	// MetricEvents counts events applied.
	MetricEvents = "steadfast.cqrs.projection.events"
	// MetricSkipped counts events skipped (poison or undecodable).
	MetricSkipped = "steadfast.cqrs.projection.skipped"
	// MetricLagEvents is a gauge: events in the log after the checkpoint
	// (needs a HeadReader; an estimate, counting sequence numbers).
	MetricLagEvents = "steadfast.cqrs.projection.lag.events"
	// MetricLagSeconds is a gauge: age of the last applied event while the
	// projection is behind, 0 once it has caught up.
	MetricLagSeconds = "steadfast.cqrs.projection.lag.seconds"
	// MetricConflicts counts checkpoint conflicts and lost leases.
	MetricConflicts = "steadfast.cqrs.projection.conflicts"
)

// Projector runs one projection version: it stands by until it holds the
// version's lease, then reads the global log from the stored checkpoint and
// applies batch after batch, each in one transaction with its checkpoint.
//
// Guarantees: each event's effect on the read model happens exactly once,
// across crashes at any point (a batch and its checkpoint commit together
// or not at all) and across instances (one holds the lease; a checkpoint
// write that does not start from the stored checkpoint is refused, so an
// instance that lost its lease cannot apply a batch twice). Events come in
// log order (see eventsource.LogReader); upcasters apply.
type Projector[T any] struct {
	store  Store[T]
	source eventsource.LogReader
	reg    *eventsource.Registry
	def    Projection[T]
	cfg    Config
	log    *slog.Logger
	attrs  metric.MeasurementOption
	head   HeadReader

	events, skipped, conflicts metric.Int64Counter
	lagEvents, lagSeconds      metric.Float64Gauge

	mu      sync.Mutex
	pos     eventsource.Position
	moved   chan struct{}
	active  bool
	holding bool
}

// NewProjector returns a projector of p over source (the event store's
// global log), decoding with reg, writing to store.
func NewProjector[T any](store Store[T], source eventsource.LogReader, reg *eventsource.Registry, p Projection[T], cfg Config) (*Projector[T], error) {
	switch {
	case store == nil || source == nil || reg == nil:
		return nil, fmt.Errorf("%w: nil store, source or registry", ErrInvalidConfig)
	case cfg.BatchSize < 0 || cfg.PollInterval < 0 || cfg.TakeoverInterval < 0:
		return nil, fmt.Errorf("%w: negative BatchSize, PollInterval or TakeoverInterval", ErrInvalidConfig)
	}
	p, err := p.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.TakeoverInterval == 0 {
		cfg.TakeoverInterval = DefaultTakeoverInterval
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = DefaultProgressInterval
	}
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		cfg.Owner = fmt.Sprintf("%s:%d:%s", host, os.Getpid(), broker.NewID()[24:])
	}
	pr := &Projector[T]{store: store, source: source, reg: reg, def: p, cfg: cfg, log: telemetry.Logger(cfg.Logger),
		moved: make(chan struct{}), head: cfg.Head}
	if pr.head == nil {
		pr.head, _ = source.(HeadReader)
	}
	pr.attrs = p.ID.attrs()
	m := telemetry.Meter(cfg.MeterProvider, "cqrs")
	counter := func(dst *metric.Int64Counter, name, desc string) {
		if err == nil {
			*dst, err = m.Int64Counter(name, metric.WithDescription(desc))
		}
	}
	gauge := func(dst *metric.Float64Gauge, name, unit, desc string) {
		if err == nil {
			*dst, err = m.Float64Gauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		}
	}
	counter(&pr.events, MetricEvents, "events applied by the projection")
	counter(&pr.skipped, MetricSkipped, "events the projection skipped")
	counter(&pr.conflicts, MetricConflicts, "checkpoint conflicts and lost leases")
	gauge(&pr.lagEvents, MetricLagEvents, "{event}", "events in the log after the projection's checkpoint")
	gauge(&pr.lagSeconds, MetricLagSeconds, "s", "age of the last applied event while the projection is behind")
	if err != nil {
		return nil, err
	}
	if _, err := pr.reader(); err != nil {
		return nil, err
	}
	return pr, nil
}

// withDefaults checks p and fills its zero fields, for NewProjector and
// NewConsumer.
func (p Projection[T]) withDefaults() (Projection[T], error) {
	switch {
	case p.Handle == nil:
		return p, fmt.Errorf("%w: projection %s has no Handle", ErrInvalidConfig, p.ID)
	case p.Poison < Stop || p.Poison > Retry:
		return p, fmt.Errorf("%w: unknown poison policy %d", ErrInvalidConfig, p.Poison)
	case p.MaxAttempts < 0:
		return p, fmt.Errorf("%w: negative MaxAttempts", ErrInvalidConfig)
	}
	if err := p.ID.Validate(); err != nil {
		return p, err
	}
	if err := p.Backoff.Validate(); err != nil {
		return p, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	return p, nil
}

// attrs are the metric attributes of version id.
func (id ID) attrs() metric.MeasurementOption {
	return metric.WithAttributes(attribute.String("steadfast.projection", id.Name), attribute.Int("steadfast.projection.version", id.Version))
}

// ID returns the projection version the projector runs.
func (p *Projector[T]) ID() ID { return p.def.ID }

func (p *Projector[T]) reader() (*eventsource.Reader, error) {
	pol := eventsource.Stop
	if p.def.Poison == Skip {
		pol = eventsource.Skip
	}
	return eventsource.NewReader(p.source, p.reg, eventsource.ReaderConfig{Filter: p.def.Filter, BatchSize: p.cfg.BatchSize,
		PollInterval: p.cfg.PollInterval, Undecodable: pol, Logger: p.cfg.Logger, MeterProvider: p.cfg.MeterProvider,
		Backoff: p.def.Backoff})
}

// Run stands by until it holds the lease, then applies events until ctx
// is done (it returns nil) or the projection stops on a poison or
// undecodable event (it returns an error wrapping ErrPoison, or the
// eventsource decoding error, with the status stored as StatusStopped).
// A stopped projection returns ErrStopped at once. Lost leases,
// checkpoint conflicts and store failures are logged and Run stands by
// again (after Backoff for failures).
func (p *Projector[T]) Run(ctx context.Context) error {
	failures := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		lease, err := p.store.Acquire(ctx, p.def.ID, p.cfg.Owner)
		if errors.Is(err, ErrLocked) {
			if sleep(ctx, p.cfg.TakeoverInterval) != nil {
				return nil
			}
			continue
		}
		if err == nil {
			p.setHolding(true)
			p.log.InfoContext(ctx, "cqrs: projection lease taken", "projection", p.def.ID.String(), "owner", p.cfg.Owner)
			err = p.runLeased(ctx, lease)
			p.setHolding(false)
			if rerr := lease.Release(context.WithoutCancel(ctx)); rerr != nil && ctx.Err() == nil {
				p.log.WarnContext(ctx, "cqrs: releasing the projection lease failed", "projection", p.def.ID.String(), "error", rerr)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		var unknown *eventsource.UnknownEventError
		var undecodable *eventsource.DecodeError
		switch {
		case errors.Is(err, ErrPoison), errors.Is(err, ErrStopped), errors.As(err, &unknown), errors.As(err, &undecodable),
			errors.Is(err, eventsource.ErrCheckpointAhead):
			return err
		case errors.Is(err, ErrCheckpointConflict), errors.Is(err, ErrLeaseLost):
			p.conflicts.Add(ctx, 1, p.attrs)
			p.log.WarnContext(ctx, "cqrs: projection lease lost; standing by", "projection", p.def.ID.String(), "error", err)
			failures = 0
			if sleep(ctx, p.cfg.TakeoverInterval) != nil {
				return nil
			}
			continue
		}
		failures++
		p.log.WarnContext(ctx, "cqrs: projection failed; retrying", "projection", p.def.ID.String(), "attempt", failures, "error", err)
		if sleep(ctx, p.def.Backoff.Delay(failures)) != nil {
			return nil
		}
	}
}

// run is the state of one leased run.
type run[T any] struct {
	p        *Projector[T]
	lease    Lease[T]
	pos      eventsource.Position
	attempts int
	lastSeq  int64
	lastTime time.Time
	// progress
	since      time.Time
	sinceCount int64
	logged     time.Time
}

func (p *Projector[T]) runLeased(ctx context.Context, lease Lease[T]) error {
	st, err := lease.State(ctx)
	if err != nil {
		return err
	}
	if st.Status == StatusStopped {
		return fmt.Errorf("%w: %s at %s: %s", ErrStopped, p.def.ID, st.Checkpoint, st.Error)
	}
	p.setPos(st.Checkpoint, st.Active)
	r := &run[T]{p: p, lease: lease, pos: st.Checkpoint, attempts: st.Attempts, since: time.Now(), logged: time.Now()}
	if err := fault.At(ctx, "cqrs.projector.run", p.def.ID); err != nil {
		return err
	}
	reader, err := p.reader()
	if err != nil {
		return err
	}
	if p.cfg.Activate && !st.Active {
		if err := r.maybeActivate(ctx); err != nil {
			return err
		}
	}
	err = reader.Run(ctx, st.Checkpoint, r.batch)
	var unknown *eventsource.UnknownEventError
	var undecodable *eventsource.DecodeError
	if errors.As(err, &unknown) || errors.As(err, &undecodable) {
		if ferr := lease.Fail(context.WithoutCancel(ctx), r.pos, StatusStopped, r.attempts+1, err.Error()); ferr != nil {
			return errors.Join(err, ferr)
		}
		p.log.ErrorContext(ctx, "cqrs: projection stopped on an undecodable event", "projection", p.def.ID.String(),
			"checkpoint", r.pos.String(), "error", err)
	}
	return err
}

type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

func skippedOf(s []eventsource.Skipped, after, upto eventsource.Position) []SkippedEvent {
	var out []SkippedEvent
	for _, k := range s {
		if after.Before(k.Record.Position) && !upto.Before(k.Record.Position) {
			out = append(out, SkippedEvent{Position: k.Record.Position, StreamID: k.Record.StreamID, Version: k.Record.Version,
				Type: k.Record.Type, EventID: k.Record.ID, Error: k.Err.Error()})
		}
	}
	return out
}

// apply commits events (with the skipped records in range) from r.pos to
// upto.
func (r *run[T]) apply(ctx context.Context, events []eventsource.Envelope, skipped []eventsource.Skipped, upto eventsource.Position) error {
	p := r.p
	b := &Batch{Projection: p.def.ID, Events: events, From: r.pos, Checkpoint: upto}
	c := Commit{From: r.pos, To: upto, Events: len(events), Skipped: skippedOf(skipped, r.pos, upto)}
	var fn func(context.Context, T, eventsource.Position) error
	if len(events) > 0 {
		fn = func(ctx context.Context, tx T, live eventsource.Position) error {
			b.live = live
			if err := p.def.Handle(ctx, tx, b); err != nil {
				return &handlerError{err}
			}
			return fault.At(ctx, "cqrs.projector.applied", b)
		}
	}
	if err := r.lease.Apply(ctx, c, fn); err != nil {
		return err
	}
	if err := fault.At(ctx, "cqrs.projector.committed", b); err != nil {
		return err
	}
	r.pos, r.attempts = upto, 0
	if n := len(events); n > 0 {
		p.events.Add(ctx, int64(n), p.attrs)
		r.lastSeq, r.lastTime = events[n-1].Position.Sequence, events[n-1].Time
		r.sinceCount += int64(n)
	}
	if len(c.Skipped) > 0 {
		p.skipped.Add(ctx, int64(len(c.Skipped)), p.attrs)
	}
	p.setPos(upto, false)
	return nil
}

// batch is the reader's handler.
func (r *run[T]) batch(ctx context.Context, b eventsource.Batch) error {
	p := r.p
	if err := fault.At(ctx, "cqrs.projector.batch", b); err != nil {
		return err
	}
	err := r.apply(ctx, b.Events, b.Skipped, b.Checkpoint)
	var he *handlerError
	if errors.As(err, &he) {
		err = r.isolate(ctx, b, he.err)
	}
	if err != nil {
		return err
	}
	r.progress(ctx, len(b.Events)+len(b.Skipped) >= p.cfg.BatchSize)
	if p.cfg.Activate && !p.isActive() {
		return r.maybeActivate(ctx)
	}
	return nil
}

// isolate applies a failed batch one event (one position) at a time to
// find the poison event, and applies the policy to it.
func (r *run[T]) isolate(ctx context.Context, b eventsource.Batch, first error) error {
	p := r.p
	p.log.WarnContext(ctx, "cqrs: projection handler failed on a batch; applying it event by event", "projection", p.def.ID.String(),
		"checkpoint", r.pos.String(), "error", first)
	evs := b.Events
	for len(evs) > 0 {
		n := 1
		for n < len(evs) && evs[n].Position == evs[0].Position {
			n++ // values an upcaster split one event into
		}
		group := evs[:n]
		at := group[0].Position
		err := r.apply(ctx, group, b.Skipped, at)
		var he *handlerError
		if !errors.As(err, &he) {
			if err != nil {
				return err
			}
			evs = evs[n:]
			continue
		}
		r.attempts++
		rec := group[0].Record
		perr := &PoisonError{Projection: p.def.ID, Position: at.String(), StreamID: rec.StreamID, Type: rec.Type, Attempts: r.attempts, Err: he.err}
		switch {
		case p.def.Poison == Skip:
			p.log.WarnContext(ctx, "cqrs: skipping a poison event", "projection", p.def.ID.String(), "error", perr)
			sk := []eventsource.Skipped{{Record: rec, Err: he.err}}
			if err := r.apply(ctx, nil, append(sk, b.Skipped...), at); err != nil {
				return err
			}
			evs = evs[n:]
		case p.def.Poison == Retry && r.attempts < p.def.MaxAttempts:
			if err := r.lease.Fail(ctx, r.pos, StatusRetrying, r.attempts, he.err.Error()); err != nil {
				return err
			}
			p.log.WarnContext(ctx, "cqrs: projection handler failed; retrying the event", "projection", p.def.ID.String(), "error", perr)
			if err := sleep(ctx, p.def.Backoff.Delay(r.attempts)); err != nil {
				return err
			}
		default:
			if err := r.lease.Fail(ctx, r.pos, StatusStopped, r.attempts, perr.Error()); err != nil {
				return errors.Join(perr, err)
			}
			p.log.ErrorContext(ctx, "cqrs: projection stopped on a poison event", "projection", p.def.ID.String(), "error", perr)
			return perr
		}
	}
	if r.pos != b.Checkpoint {
		return r.apply(ctx, nil, b.Skipped, b.Checkpoint)
	}
	return nil
}

func (r *run[T]) maybeActivate(ctx context.Context) error {
	p := r.p
	page, err := p.source.ReadLog(ctx, eventsource.LogQuery{After: r.pos, Limit: 1, Filter: p.def.Filter})
	if err != nil || len(page.Records) > 0 {
		return nil // not caught up (or cannot tell): try after the next batch
	}
	err = p.store.Activate(ctx, p.def.ID, p.def.Views)
	if errors.Is(err, ErrNotCaughtUp) {
		return nil
	}
	if err != nil {
		p.log.WarnContext(ctx, "cqrs: activating the projection version failed; trying again after the next batch",
			"projection", p.def.ID.String(), "error", err)
		return nil
	}
	p.mu.Lock()
	p.active = true
	p.mu.Unlock()
	p.log.InfoContext(ctx, "cqrs: projection version activated", "projection", p.def.ID.String(), "checkpoint", r.pos.String())
	return nil
}

// progress records the lag and logs progress while behind.
func (r *run[T]) progress(ctx context.Context, full bool) {
	p := r.p
	behind := full
	if p.head != nil {
		if h, err := p.head.Head(ctx); err == nil {
			lag := max(h-r.lastSeq, 0)
			if r.lastSeq == 0 && !full {
				lag = 0
			}
			p.lagEvents.Record(ctx, float64(lag), p.attrs)
			behind = lag > 0 && full
		}
	}
	secs := 0.0
	if behind && !r.lastTime.IsZero() {
		secs = time.Since(r.lastTime).Seconds()
	}
	p.lagSeconds.Record(ctx, secs, p.attrs)
	if !behind || p.cfg.ProgressInterval < 0 || time.Since(r.logged) < p.cfg.ProgressInterval {
		return
	}
	el := time.Since(r.since).Seconds()
	rate := float64(r.sinceCount) / max(el, 1e-9)
	attrs := []any{"projection", p.def.ID.String(), "position", r.pos.String(), "events_per_second", int64(rate),
		"lag_seconds", secs}
	if p.head != nil {
		if h, err := p.head.Head(ctx); err == nil {
			lag := max(h-r.lastSeq, 0)
			attrs = append(attrs, "lag_events", lag)
			if rate > 0 {
				attrs = append(attrs, "time_left", (time.Duration(float64(lag)/rate) * time.Second).Round(time.Second).String())
			}
		}
	}
	p.log.InfoContext(ctx, "cqrs: projection progress", attrs...)
	r.logged = time.Now()
}

func (p *Projector[T]) setHolding(h bool) {
	p.mu.Lock()
	p.holding = h
	p.mu.Unlock()
}

func (p *Projector[T]) isActive() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.active
}

func (p *Projector[T]) setPos(pos eventsource.Position, active bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if active {
		p.active = true
	}
	if pos.Compare(p.pos) != 0 {
		p.pos = pos
		close(p.moved)
		p.moved = make(chan struct{})
	}
}

// Holding reports whether this instance holds the lease now.
func (p *Projector[T]) Holding() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding
}

// Checkpoint returns the checkpoint this instance last applied or loaded.
func (p *Projector[T]) Checkpoint() eventsource.Position {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pos
}

// Wait returns once this instance has applied the log up to pos (its
// checkpoint is at or after pos), at once when it already has; or fails
// when ctx ends first, with an error wrapping ErrTimeout and ctx's error.
// It waits for this process's projector; Wait (the function) waits for
// the stored checkpoint, whichever instance applies.
func (p *Projector[T]) Wait(ctx context.Context, pos eventsource.Position) error {
	for {
		p.mu.Lock()
		cur, ch := p.pos, p.moved
		p.mu.Unlock()
		if !cur.Before(pos) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: projection %s at %s, waiting for %s: %w", ErrTimeout, p.def.ID, cur, pos, ctx.Err())
		case <-ch:
		}
	}
}

// DefaultWaitPoll is the polling schedule of Wait: 2ms doubling to 50ms.
func DefaultWaitPoll() broker.Backoff {
	return broker.Backoff{Initial: 2 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2, Jitter: -1}
}

// Wait is read-your-writes: it returns once the serving version of the
// projection name has a stored checkpoint at or after pos (the Position of
// a command's Result), polling the store on DefaultWaitPoll's schedule, or
// fails after timeout (or when ctx ends) with an error wrapping ErrTimeout.
// A timeout <= 0 waits as long as ctx allows.
func Wait(ctx context.Context, states StateReader, name string, pos eventsource.Position, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	poll := DefaultWaitPoll()
	var cur eventsource.Position
	for attempt := 1; ; attempt++ {
		v, err := states.ActiveVersion(ctx, name)
		if err == nil && v > 0 {
			var st State
			st, err = states.State(ctx, ID{Name: name, Version: v})
			if err == nil {
				cur = st.Checkpoint
				if !cur.Before(pos) {
					return nil
				}
			}
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		if sleep(ctx, poll.Delay(attempt)) != nil {
			return fmt.Errorf("%w: projection %q at %s, waiting for %s: %w", ErrTimeout, name, cur, pos, ctx.Err())
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
