package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Defaults for Config fields left zero.
const (
	DefaultReplyTopic        = "saga.replies"
	DefaultGroup             = "saga-engine"
	DefaultPollInterval      = time.Second
	DefaultTimerConcurrency  = 4
	DefaultTransitionTimeout = time.Minute
	DefaultRetention         = 7 * 24 * time.Hour
	DefaultCleanupInterval   = 10 * time.Minute
	DefaultStatsInterval     = 10 * time.Second
)

// ErrRunning: Run was called on an engine that is already running.
var ErrRunning = errors.New("saga: engine already running")

// Config tunes an Engine. The zero value is ready to use with a store and
// no subscriber (deliver replies with HandleReply yourself).
type Config struct {
	// Subscriber, when set, is where Run consumes replies: ReplyTopic in
	// consumer group Group. Without it, subscribe HandleReply yourself
	// (with middleware of your own, for instance).
	Subscriber broker.Subscriber
	// ReplyTopic is the topic commands ask participants to reply to, and
	// the topic Run consumes. Default DefaultReplyTopic.
	ReplyTopic string
	// Group is the reply consumer group; every engine of one fleet uses
	// the same. Default DefaultGroup.
	Group string
	// Concurrency is the number of replies handled at once
	// (broker.Subscription.Concurrency; replies of one instance, keyed by
	// its ID, are handled one at a time). Zero: the broker's default.
	Concurrency int
	// PollInterval is how often Run looks for due timers when nothing woke
	// it. Timers due sooner than this also wake the engines through the
	// store's notifications. Default DefaultPollInterval (1s).
	PollInterval time.Duration
	// TimerConcurrency is the number of due instances fired at once.
	// Default DefaultTimerConcurrency (4).
	TimerConcurrency int
	// TransitionTimeout bounds one transition (load, decide, local steps,
	// save, commit). Transitions run in a context detached from the
	// caller's cancellation (so that stopping an engine, or a cancelled
	// request, never leaves half a compensation), bounded by this. Default
	// DefaultTransitionTimeout (1m).
	TransitionTimeout time.Duration
	// ParkTopic, when set, receives an event (type "saga.parked", JSON
	// payload with id, type, version, step, parked_from, reason) through
	// the outbox, in the transaction that parks an instance.
	ParkTopic string
	// AllowUnregistered lets Run start while unfinished instances run on
	// definition versions that are not registered (see Check): they are
	// logged and left to engines that have them. By default Run refuses to
	// start, so a deploy that dropped a version still in use fails loudly
	// instead of stranding its instances.
	AllowUnregistered bool
	// Retention is how long finished instances and their history are kept
	// before Run deletes them, every CleanupInterval. Default
	// DefaultRetention (7 days); negative keeps them forever.
	Retention       time.Duration
	CleanupInterval time.Duration // default DefaultCleanupInterval (10m)
	// StatsInterval is how often the instance gauges are refreshed from
	// the store. Default DefaultStatsInterval (10s); negative disables
	// them.
	StatsInterval time.Duration
	// Logger receives the engine's logs (parked instances, rejected
	// replies, store failures). Default slog.Default().
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to the OpenTelemetry
	// globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.Concurrency < 0:
		return c, fmt.Errorf("%w: Concurrency %d < 0", ErrInvalidConfig, c.Concurrency)
	case c.PollInterval < 0:
		return c, fmt.Errorf("%w: PollInterval %v < 0", ErrInvalidConfig, c.PollInterval)
	case c.TimerConcurrency < 0:
		return c, fmt.Errorf("%w: TimerConcurrency %d < 0", ErrInvalidConfig, c.TimerConcurrency)
	case c.TransitionTimeout < 0:
		return c, fmt.Errorf("%w: TransitionTimeout %v < 0", ErrInvalidConfig, c.TransitionTimeout)
	case c.CleanupInterval < 0:
		return c, fmt.Errorf("%w: CleanupInterval %v < 0", ErrInvalidConfig, c.CleanupInterval)
	}
	if c.ReplyTopic == "" {
		c.ReplyTopic = DefaultReplyTopic
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.TimerConcurrency == 0 {
		c.TimerConcurrency = DefaultTimerConcurrency
	}
	if c.TransitionTimeout == 0 {
		c.TransitionTimeout = DefaultTransitionTimeout
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = DefaultStatsInterval
	}
	c.Logger = telemetry.Logger(c.Logger)
	return c, nil
}

// Engine runs saga instances: it starts them, applies replies, fires
// timers and carries out operator requests, writing every transition
// through its Store. An Engine is not a server: it lives in your service,
// and any number of engines (in one process or many) share one store, each
// instance being advanced by one of them at a time.
//
// Every transition is one store transaction that loads the instance,
// decides, runs local steps, writes the new state, appends the history and
// enqueues the commands it sends; a crash at any point leaves either the
// old state (and the triggering reply or timer is applied again) or the
// new one (and a redelivered reply is recognised as already applied), never
// half. Two engines that decide on one instance at once race on its
// revision: the loser rolls back and decides again on the reloaded
// instance, in a fresh transaction.
type Engine struct {
	store  Store
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
	m      *metrics

	mu     sync.RWMutex
	defs   map[DefinitionKey]*definition
	keys   []DefinitionKey
	wake   chan struct{}
	active atomic.Bool
}

// NewEngine returns an engine on store. Register definitions, then Run it.
func NewEngine(store Store, cfg Config) (*Engine, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil store", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{store: store, cfg: cfg, log: cfg.Logger,
		tracer: telemetry.Tracer(cfg.TracerProvider, "saga"),
		defs:   make(map[DefinitionKey]*definition), wake: make(chan struct{}, 1)}
	if e.m, err = newMetrics(cfg.MeterProvider); err != nil {
		return nil, fmt.Errorf("saga: metrics: %w", err)
	}
	return e, nil
}

// Register adds definitions. Several versions of one saga type may be
// registered together: each instance runs on its own version. Registering
// the same type and version twice is an error wrapping
// ErrInvalidDefinition.
func (e *Engine) Register(defs ...AnyDefinition) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ad := range defs {
		if ad == nil || ad.compiled() == nil {
			return fmt.Errorf("%w: nil definition", ErrInvalidDefinition)
		}
		d := ad.compiled()
		k := DefinitionKey{d.name, d.version}
		if _, dup := e.defs[k]; dup {
			return fmt.Errorf("%w: %s version %d registered twice", ErrInvalidDefinition, d.name, d.version)
		}
		e.defs[k] = d
		e.keys = append(e.keys, k)
	}
	slices.SortFunc(e.keys, func(a, b DefinitionKey) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return a.Version - b.Version
	})
	return nil
}

// Registered returns the registered definitions' keys, sorted.
func (e *Engine) Registered() []DefinitionKey {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return slices.Clone(e.keys)
}

func (e *Engine) definition(typ string, version int) (*definition, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if d := e.defs[DefinitionKey{typ, version}]; d != nil {
		return d, nil
	}
	for k := range e.defs {
		if k.Type == typ {
			return nil, &UnregisteredError{Versions: []TypeVersion{{Type: typ, Version: version}}}
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
}

// Start starts an instance of def with the given ID and data, and reports
// whether it created it: starting an ID that exists does nothing and
// reports false (an error wrapping ErrIDConflict when that instance has
// another saga type). The instance runs its first local steps and enqueues
// its first command in the transaction that creates it. def must be
// registered (ErrUnknownType otherwise).
func Start[D any](ctx context.Context, e *Engine, def *Definition[D], id string, data D) (bool, error) {
	if def == nil {
		return false, fmt.Errorf("%w: nil definition", ErrUnknownType)
	}
	return e.start(ctx, def.d, id, &data)
}

func (e *Engine) start(ctx context.Context, d *definition, id string, data any) (bool, error) {
	if err := checkName("saga ID", id); err != nil {
		return false, fmt.Errorf("saga: start %s: %w", d.name, err)
	}
	if reg, err := e.definition(d.name, d.version); err != nil || reg != d {
		return false, fmt.Errorf("%w: %s version %d is not registered with this engine", ErrUnknownType, d.name, d.version)
	}
	payload, err := d.encode(data)
	if err != nil {
		return false, fmt.Errorf("saga: start %s %s: encode data: %w", d.name, id, err)
	}
	ctx, cancel := e.detach(ctx)
	defer cancel()
	ctx, span := e.tracer.Start(ctx, "saga.start "+d.name, trace.WithAttributes(
		attribute.String("saga.id", id), attribute.String("saga.type", d.name), attribute.Int("saga.version", d.version)))
	defer span.End()
	for {
		created, err := e.tryStart(ctx, d, id, payload)
		if errors.Is(err, ErrConflict) && ctx.Err() == nil {
			e.conflictPause()
			continue
		}
		if err != nil {
			endSpan(span, err)
		}
		return created, err
	}
}

func (e *Engine) tryStart(ctx context.Context, d *definition, id string, payload []byte) (created bool, err error) {
	tx, err := e.store.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("saga: start %s %s: %w", d.name, id, err)
	}
	defer e.rollback(ctx, tx, &err)
	now := time.Now()
	inst := Instance{ID: id, Type: d.name, Version: d.version, Status: StatusRunning, Data: payload,
		CreatedAt: now, Revision: 1}
	if tp := telemetry.Inject(ctx, nil)[broker.HeaderTraceparent]; tp != "" {
		inst.Trace = tp
	}
	if d.deadline > 0 {
		inst.Deadline = now.Add(d.deadline)
	}
	t := e.newTransition(ctx, tx, d, inst, "")
	t.now = now
	if err := t.start(); err != nil {
		return false, err
	}
	created, err = tx.Create(ctx, t.change())
	if err != nil {
		return false, fmt.Errorf("saga: start %s %s: %w", d.name, id, err)
	}
	if !created {
		_ = tx.Rollback(ctx)
		got, err := e.store.Get(ctx, id)
		if err != nil {
			return false, fmt.Errorf("saga: start %s %s: it exists, but: %w", d.name, id, err)
		}
		if got.Type != d.name {
			return false, fmt.Errorf("%w: start %s %s: the instance is a %s", ErrIDConflict, d.name, id, got.Type)
		}
		return false, nil
	}
	e.afterCommit(tx, t)
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("saga: start %s %s: commit: %w", d.name, id, err)
	}
	e.m.started.Add(ctx, 1, metric.WithAttributes(attribute.String("saga.type", d.name)))
	return true, nil
}

// rollback rolls tx back unless it ended (Rollback after Commit is a
// no-op); a failure is logged.
func (e *Engine) rollback(ctx context.Context, tx StoreTx, err *error) {
	if rerr := tx.Rollback(ctx); rerr != nil {
		e.log.WarnContext(ctx, "saga: rollback", "error", rerr, "cause", *err)
	}
}

// afterCommit registers the transition's bookkeeping to run once tx
// committed: metrics, and a local wake-up when a timer is due soon.
func (e *Engine) afterCommit(tx StoreTx, t *transition) {
	wake := !t.inst.WakeAt.IsZero() && time.Until(t.inst.WakeAt) < e.cfg.PollInterval
	tx.AfterCommit(func() {
		e.m.record(t.ctx, t)
		if t.outcome == StatusParked {
			e.log.WarnContext(t.ctx, "saga: instance parked", "saga_id", t.inst.ID, "saga_type", t.inst.Type,
				"saga_version", t.inst.Version, "step", t.inst.StepName, "reason", t.inst.Failure)
		}
		if wake {
			e.poke()
		}
	})
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// detach returns a context that keeps ctx's values (its trace) but not its
// cancellation, bounded by TransitionTimeout.
func (e *Engine) detach(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), e.cfg.TransitionTimeout)
}

// conflictPause waits a moment after a lost race, so that two engines
// do not keep colliding.
func (e *Engine) conflictPause() {
	time.Sleep(time.Duration(1+rand.IntN(5)) * time.Millisecond)
}

// update loads an instance and applies fn in a transaction, again in a
// fresh one after each lost race. A messageID already in the instance's
// history makes it return nil without calling fn.
func (e *Engine) update(ctx context.Context, id, messageID string, fn func(t *transition) error) error {
	ctx, cancel := e.detach(ctx)
	defer cancel()
	for {
		err := e.tryUpdate(ctx, id, messageID, fn)
		if errors.Is(err, ErrConflict) && ctx.Err() == nil {
			e.m.conflicts.Add(ctx, 1)
			e.conflictPause()
			continue
		}
		return err
	}
}

func (e *Engine) tryUpdate(ctx context.Context, id, messageID string, fn func(t *transition) error) (err error) {
	tx, err := e.store.Begin(ctx)
	if err != nil {
		return fmt.Errorf("saga: instance %s: %w", id, err)
	}
	defer e.rollback(ctx, tx, &err)
	inst, seen, err := tx.Load(ctx, id, messageID)
	if err != nil {
		return err
	}
	if seen {
		e.m.duplicates.Add(ctx, 1)
		return nil
	}
	d, err := e.definition(inst.Type, inst.Version)
	if err != nil {
		return fmt.Errorf("saga: instance %s: %w", id, err)
	}
	t := e.newTransition(ctx, tx, d, inst, messageID)
	if err := fn(t); err != nil {
		return err
	}
	if len(t.events) == 0 {
		return nil
	}
	if err := tx.Save(ctx, t.change()); err != nil {
		return err
	}
	e.afterCommit(tx, t)
	return tx.Commit(ctx)
}

// HandleReply applies one reply. It is a broker.Handler: Run subscribes it
// when Config.Subscriber is set; otherwise subscribe it yourself to
// ReplyTopic.
//
//   - The awaited reply advances the instance; the next commands commit
//     with the transition.
//   - A reply already applied (a redelivery) is acknowledged and changes
//     nothing: its message ID is in the instance's history.
//   - A reply that is not awaited (late after a timeout or once
//     compensation began, for an earlier attempt, or for a finished
//     instance) is recorded in the history and otherwise ignored.
//   - A reply naming an instance whose other headers are malformed is
//     recorded in that instance's history as rejected.
//   - A reply without a usable saga ID, or naming no instance, returns an
//     error matching ErrMalformedReply or ErrNotFound and dlq.ErrPermanent,
//     so dead-letter middleware moves it aside at once.
//   - A reply for an instance whose definition version is not registered
//     here returns an error wrapping ErrUnregisteredVersion (transient: an
//     engine that has it may take it).
func (e *Engine) HandleReply(ctx context.Context, d broker.Delivery) error {
	r, perr := parseReply(d.Message)
	if r.SagaID == "" {
		e.m.rejected.Add(ctx, 1)
		e.log.WarnContext(ctx, "saga: reply without a saga ID rejected", "message_id", d.ID, "topic", d.Topic, "error", perr)
		return dlq.Permanent(perr)
	}
	ctx = telemetry.Continue(ctx, d.Headers)
	ctx, span := e.tracer.Start(ctx, "saga.reply "+orDefault(r.Step, "?"), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("saga.id", r.SagaID), attribute.String("saga.step", r.Step),
			attribute.String("messaging.message.id", d.ID), attribute.String("saga.outcome", string(r.Outcome))))
	err := e.update(ctx, r.SagaID, d.ID, func(t *transition) error {
		if perr != nil {
			e.m.rejected.Add(ctx, 1)
			e.log.WarnContext(ctx, "saga: malformed reply recorded", "saga_id", r.SagaID, "message_id", d.ID, "error", perr)
			t.rejectReply(r, perr)
			return nil
		}
		return t.reply(r)
	})
	if errors.Is(err, ErrNotFound) {
		e.m.rejected.Add(ctx, 1)
		err = dlq.Permanent(fmt.Errorf("saga: reply %s: %w", d.ID, err))
	}
	endSpan(span, err)
	return err
}

// fire is the ClaimDue callback: it applies whatever is due on a claimed
// instance.
func (e *Engine) fire(ctx context.Context, tx StoreTx, inst Instance) error {
	d, err := e.definition(inst.Type, inst.Version)
	if err != nil {
		return err
	}
	ctx = telemetry.Extract(ctx, map[string]string{broker.HeaderTraceparent: inst.Trace})
	t := e.newTransition(ctx, tx, d, inst, "")
	if err := t.timer(); err != nil {
		return err
	}
	c := t.change()
	if len(t.events) == 0 && !c.Instance.WakeAt.After(time.Now()) {
		// Nothing was due after all (a clock step, or a wake time that no
		// longer applies): look again later rather than at once.
		c.Instance.WakeAt = time.Now().Add(e.cfg.PollInterval)
		c.Notify = false
		e.log.DebugContext(ctx, "saga: instance woke with nothing due", "saga_id", inst.ID)
	}
	if err := tx.Save(ctx, c); err != nil {
		return err
	}
	e.afterCommit(tx, t)
	return nil
}

// Check reports unfinished instances whose definition version is not
// registered, as an *UnregisteredError (matching ErrUnregisteredVersion).
// Run calls it first.
func (e *Engine) Check(ctx context.Context) error {
	tvs, err := e.store.Unfinished(ctx)
	if err != nil {
		return fmt.Errorf("saga: check versions: %w", err)
	}
	e.mu.RLock()
	var missing []TypeVersion
	for _, tv := range tvs {
		if e.defs[DefinitionKey{tv.Type, tv.Version}] == nil {
			missing = append(missing, tv)
		}
	}
	e.mu.RUnlock()
	if len(missing) > 0 {
		return &UnregisteredError{Versions: missing}
	}
	return nil
}

// Run works until ctx is cancelled: it consumes replies (when
// Config.Subscriber is set), fires due timers and operator requests,
// refreshes the gauges and deletes finished instances past the retention.
// It first calls Check and, unless Config.AllowUnregistered, returns its
// error without starting. On cancellation it stops taking work, lets the
// transitions in flight commit, and returns nil. It returns an error when
// the subscription fails for good.
func (e *Engine) Run(ctx context.Context) error {
	if !e.active.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer e.active.Store(false)
	if err := e.Check(ctx); err != nil {
		if !e.cfg.AllowUnregistered || !errors.Is(err, ErrUnregisteredVersion) {
			return err
		}
		e.log.ErrorContext(ctx, "saga: running with unregistered definition versions; their instances wait for an engine that has them", "error", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	goRun := func(f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				select {
				case errc <- err:
				default:
				}
				cancel()
			}
		}()
	}
	if e.cfg.Subscriber != nil {
		goRun(func(ctx context.Context) error {
			err := e.cfg.Subscriber.Subscribe(ctx, broker.Subscription{Topic: e.cfg.ReplyTopic, Group: e.cfg.Group,
				Concurrency: e.cfg.Concurrency}, e.HandleReply)
			if err != nil {
				return fmt.Errorf("saga: reply subscription: %w", err)
			}
			return nil
		})
	}
	goRun(e.timers)
	if n, ok := e.store.(Notifier); ok {
		goRun(func(ctx context.Context) error { e.listen(ctx, n); return nil })
	}
	if e.cfg.StatsInterval > 0 {
		goRun(e.stats)
	}
	if e.cfg.Retention > 0 {
		goRun(e.cleanup)
	}
	<-ctx.Done()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// timers fires due instances, then sleeps until the next is due (at most
// PollInterval) or something wakes it.
func (e *Engine) timers(ctx context.Context) error {
	for ctx.Err() == nil {
		e.fireDue(ctx)
		wait := e.cfg.PollInterval
		next, ok, err := e.store.NextWake(ctx, e.Registered())
		switch {
		case err != nil && ctx.Err() == nil:
			e.log.WarnContext(ctx, "saga: next timer", "error", err)
		case ok:
			wait = min(wait, max(time.Until(next), 0))
		}
		if wait > 0 {
			tm := time.NewTimer(wait)
			select {
			case <-ctx.Done():
			case <-tm.C:
			case <-e.wake:
			}
			tm.Stop()
		}
	}
	return nil
}

// fireDue runs TimerConcurrency workers that claim due instances until
// none is left.
func (e *Engine) fireDue(ctx context.Context) {
	keys := e.Registered()
	if len(keys) == 0 {
		return
	}
	var wg sync.WaitGroup
	for range e.cfg.TimerConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				tctx, cancel := e.detach(ctx)
				ok, err := e.store.ClaimDue(tctx, keys, e.fire)
				cancel()
				if err != nil {
					if ctx.Err() == nil {
						e.log.WarnContext(ctx, "saga: fire timer", "error", err)
					}
					return
				}
				if !ok {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// listen keeps a notification channel open, waking the timer loop.
func (e *Engine) listen(ctx context.Context, n Notifier) {
	for ctx.Err() == nil {
		err := n.Listen(ctx, e.poke)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.WarnContext(ctx, "saga: listen for wake-ups; polling meanwhile", "error", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(e.cfg.PollInterval):
		}
	}
}

func (e *Engine) stats(ctx context.Context) error {
	tick := time.NewTicker(e.cfg.StatsInterval)
	defer tick.Stop()
	for {
		if counts, err := e.store.Counts(ctx); err == nil {
			e.m.setCounts(counts)
		} else if ctx.Err() == nil {
			e.log.WarnContext(ctx, "saga: refresh instance gauges", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (e *Engine) cleanup(ctx context.Context) error {
	tick := time.NewTicker(e.cfg.CleanupInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for ctx.Err() == nil {
			n, err := e.store.Cleanup(ctx, time.Now().Add(-e.cfg.Retention), 1000)
			if err != nil {
				if ctx.Err() == nil {
					e.log.WarnContext(ctx, "saga: cleanup", "error", err)
				}
				break
			}
			if n < 1000 {
				break
			}
		}
	}
}

// Cancel asks for an instance to be cancelled (see RequestCancel); the
// engine that picks it up compensates it. It fails with ErrPastPivot,
// ErrFinished or ErrNotFound when it cannot apply.
func (e *Engine) Cancel(ctx context.Context, id, reason string) error {
	_, err := e.store.Request(ctx, id, Request{Kind: RequestCancel, Reason: reason})
	return err
}

// Retry asks for a parked instance to be resumed (see RequestRetry).
func (e *Engine) Retry(ctx context.Context, id, reason string) error {
	_, err := e.store.Request(ctx, id, Request{Kind: RequestRetry, Reason: reason})
	return err
}

// Skip asks for a parked instance to continue past the step it parked on
// (see RequestSkip).
func (e *Engine) Skip(ctx context.Context, id, reason string) error {
	_, err := e.store.Request(ctx, id, Request{Kind: RequestSkip, Reason: reason})
	return err
}

// Timeline returns an instance with its whole history.
func (e *Engine) Timeline(ctx context.Context, id string) (Timeline, error) {
	return LoadTimeline(ctx, e.store, id)
}
