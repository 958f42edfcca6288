package eventsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Reader defaults, for zero ReaderConfig fields.
const (
	DefaultBatchSize    = 500
	DefaultPollInterval = time.Second
	DefaultStallAfter   = 10 * time.Second
)

// Policy says what a Reader does with a stored event it cannot decode: an
// unregistered type or version (ErrUnknownEvent), a payload the codec
// refuses, or a failing upcaster (ErrUndecodable).
type Policy int

const (
	// Stop delivers the events before the bad one, then stops there: the
	// next Read from that checkpoint fails with the error (Run returns it).
	// Nothing is skipped; register the type or fix the upcaster and start
	// again from the same checkpoint.
	Stop Policy = iota
	// Skip leaves the bad event out of Batch.Events, lists it in
	// Batch.Skipped (so a projector can record it, in the same transaction
	// as its checkpoint), logs it, counts it (MetricSkipped), and goes on.
	Skip
)

// ReaderConfig tunes a Reader. The zero value reads every event, 500 at a
// time, stops at an undecodable event, polls every second when the store
// cannot notify, and reports stalls after 10 seconds.
type ReaderConfig struct {
	// Filter selects events. Its Types are current type names: the reader
	// also reads the older names that upcast to them, and keeps the events
	// whose decoded type is listed.
	Filter Filter
	// BatchSize is the number of stored events read at a time. Default
	// DefaultBatchSize.
	BatchSize int
	// PollInterval is how often Run looks for new events when the store
	// sent no notification. Default DefaultPollInterval. While an open
	// transaction holds the reader back, Run polls more often, starting at
	// 10ms and doubling up to PollInterval.
	PollInterval time.Duration
	// StallAfter is how long the same open transaction may hold the reader
	// back (committed events wait behind it) before Run reports it: a
	// warning naming the blocking session (its PostgreSQL pid, state,
	// application and query), the MetricStall gauge, and OnStall; repeated
	// every StallAfter while it lasts. Default DefaultStallAfter; negative
	// turns reports off.
	StallAfter time.Duration
	// OnStall, when set, receives each stall report.
	OnStall func(Stall)
	// Undecodable is the policy for events that cannot be decoded. Default
	// Stop.
	Undecodable Policy
	// Logger receives stall reports, skipped events and read errors. Nil
	// means slog.Default().
	Logger *slog.Logger
	// MeterProvider defaults to the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
	// Backoff is the wait after a failed read before Run tries again. Zero
	// means broker.Backoff's defaults.
	Backoff broker.Backoff
}

// Metrics of a Reader.
const (
	// MetricStall is a gauge: seconds the current stall has held the reader
	// back (0 once it ends), with the blocking pid as attribute db.pid.
	MetricStall = "steadfast.eventsource.reader.stall"
	// MetricSkipped counts events the Skip policy left out.
	MetricSkipped = "steadfast.eventsource.reader.skipped"
)

// Stall is a report of an open transaction holding a reader back.
type Stall struct {
	// Blocker is the transaction, as the store's StallInspector names it.
	Blocker Blocker
	// HeldFor is how long it has held the reader at the same fence.
	HeldFor time.Duration
	// Checkpoint is where the reader stands.
	Checkpoint Position
}

// Envelope is a decoded event of the global log.
type Envelope struct {
	// Record is the event as stored (Type, SchemaVersion and Data as
	// written).
	Record
	// Event is the decoded value, upcast to its current schema version: a
	// registered Go type, StreamDeleted for a tombstone, or Shredded for a
	// crypto-shredded payload.
	Event any
	// Index numbers the values an upcaster split one stored event into
	// (0 for the first, and for events that were not split). They share the
	// record's position.
	Index int
}

// Skipped is an event the Skip policy left out, with the reason.
type Skipped struct {
	Record Record
	Err    error
}

// Batch is what one read of the global log delivers.
type Batch struct {
	// Events are the decoded events that pass the filter, in log order.
	Events []Envelope
	// Skipped are the events the Skip policy left out.
	Skipped []Skipped
	// Checkpoint is the position to read after next time: store it with
	// the effects of this batch, in the same transaction. It may advance
	// with no events (the reader passed events the filter left out, or
	// reached its fence).
	Checkpoint Position
}

// Reader reads the global log in order and decodes it: the building block
// of projections. Read reads one batch; Run reads batch after batch,
// waiting for new events (woken by the store's notifications when it has a
// Notifier, else polling) and reporting stalls.
//
// The order is the store's log order (see LogReader): every event exactly
// once, each stream in version order, never reordered, from any checkpoint
// a previous run stored. A Reader holds no position of its own: the caller
// keeps the checkpoint (Batch.Checkpoint), so a crash resumes from the last
// stored one and events after it are delivered again.
type Reader struct {
	store   LogReader
	reg     *Registry
	cfg     ReaderConfig
	filter  Filter
	want    map[string]bool
	log     *slog.Logger
	stall   metric.Float64Gauge
	skipped metric.Int64Counter
}

// NewReader returns a reader of store's global log that decodes with reg.
// It checks reg and the config; errors wrap ErrInvalidRegistry or
// ErrInvalidConfig.
func NewReader(store LogReader, reg *Registry, cfg ReaderConfig) (*Reader, error) {
	switch {
	case store == nil || reg == nil:
		return nil, fmt.Errorf("%w: nil store or registry", ErrInvalidConfig)
	case cfg.BatchSize < 0 || cfg.PollInterval < 0:
		return nil, fmt.Errorf("%w: negative BatchSize or PollInterval", ErrInvalidConfig)
	case cfg.Undecodable != Stop && cfg.Undecodable != Skip:
		return nil, fmt.Errorf("%w: unknown Undecodable policy %d", ErrInvalidConfig, cfg.Undecodable)
	}
	if err := cfg.Backoff.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := reg.Check(); err != nil {
		return nil, err
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.StallAfter == 0 {
		cfg.StallAfter = DefaultStallAfter
	}
	r := &Reader{store: store, reg: reg, cfg: cfg, log: telemetry.Logger(cfg.Logger)}
	r.filter.StreamPrefixes = cfg.Filter.StreamPrefixes
	if len(cfg.Filter.Types) > 0 {
		r.want = map[string]bool{}
		for _, t := range cfg.Filter.Types {
			if _, ok := reg.current[t]; !ok {
				return nil, fmt.Errorf("%w: filter type %q is not registered", ErrInvalidConfig, t)
			}
			r.want[t] = true
		}
		r.filter.Types = reg.storedTypes(cfg.Filter.Types)
	}
	m := telemetry.Meter(cfg.MeterProvider, "eventsource")
	var err error
	if r.stall, err = m.Float64Gauge(MetricStall, metric.WithUnit("s"),
		metric.WithDescription("how long an open transaction has held the reader back")); err != nil {
		return nil, err
	}
	if r.skipped, err = m.Int64Counter(MetricSkipped, metric.WithDescription("events the reader skipped as undecodable")); err != nil {
		return nil, err
	}
	return r, nil
}

// Read reads and decodes the next batch after the checkpoint, without
// waiting: the batch may be empty. Under the Stop policy an undecodable
// event ends the batch before it, and a Read that starts at it fails with
// its *UnknownEventError or *DecodeError.
func (r *Reader) Read(ctx context.Context, after Position) (Batch, error) {
	b, _, err := r.read(ctx, after)
	return b, err
}

// read returns the batch and the page it came from.
func (r *Reader) read(ctx context.Context, after Position) (Batch, Page, error) {
	page, err := r.store.ReadLog(ctx, LogQuery{After: after, Limit: r.cfg.BatchSize, Filter: r.filter})
	if err != nil {
		return Batch{Checkpoint: after}, page, err
	}
	b := Batch{Checkpoint: page.Next}
	if len(page.Records) > 0 {
		b.Events = make([]Envelope, 0, len(page.Records))
	}
	for i := range page.Records {
		rec := &page.Records[i]
		n0, idx := len(b.Events), 0
		err := r.reg.each(rec, func(v any, e *entry) error {
			idx++
			if r.want != nil {
				name := rec.Type
				if e != nil {
					name = e.name
				}
				if !r.want[name] {
					return nil
				}
			}
			b.Events = append(b.Events, Envelope{Record: *rec, Event: v, Index: idx - 1})
			return nil
		})
		if err == nil {
			continue
		}
		b.Events = b.Events[:n0]
		if r.cfg.Undecodable == Skip {
			b.Skipped = append(b.Skipped, Skipped{Record: *rec, Err: err})
			r.skipped.Add(ctx, 1, metric.WithAttributes(attribute.String("steadfast.event_type", rec.Type)))
			r.log.WarnContext(ctx, "eventsource: skipping an event that cannot be decoded",
				"stream", rec.StreamID, "version", rec.Version, "position", rec.Position.String(), "error", err)
			continue
		}
		if i == 0 {
			return Batch{Checkpoint: after}, page, err
		}
		b.Checkpoint = page.Records[i-1].Position
		page.Records = page.Records[:i]
		page.Next = b.Checkpoint
		return b, page, nil
	}
	return b, page, nil
}

// Run reads the log from the checkpoint from and calls handle with every
// batch whose checkpoint moved (one with events, skipped events, or only
// progress past filtered-out events), in order, one at a time, until ctx
// is done (it then returns nil) or handle returns an error (Run returns
// it). Store it and the batch's effects together in handle; if handle
// fails, nothing of the batch counts and the next Run starts again from the
// checkpoint you stored.
//
// Between reads Run waits for new events: woken by the store's Notifier
// when it has one, else after PollInterval. A failing read is logged and
// retried after Backoff, except ErrCheckpointAhead and, under the Stop
// policy, an undecodable event, which Run returns.
func (r *Reader) Run(ctx context.Context, from Position, handle func(context.Context, Batch) error) error {
	if handle == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidConfig)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wake := make(chan struct{}, 1)
	if n, ok := r.store.(Notifier); ok {
		wg.Add(1)
		go func() { defer wg.Done(); r.listen(ctx, n, wake) }()
	}
	pos := from
	var st stallTracker
	defer r.endStall(context.WithoutCancel(ctx), &st)
	failures := 0
	for {
		b, page, err := r.read(ctx, pos)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var unknown *UnknownEventError
			var undecodable *DecodeError
			if errors.Is(err, ErrCheckpointAhead) || errors.As(err, &unknown) || errors.As(err, &undecodable) {
				return err
			}
			failures++
			r.log.WarnContext(ctx, "eventsource: reading the event log failed; retrying", "checkpoint", pos.String(),
				"attempt", failures, "error", err)
			if sleep(ctx, r.cfg.Backoff.Delay(failures)) != nil {
				return nil
			}
			continue
		}
		failures = 0
		if b.Checkpoint != pos {
			if err := handle(ctx, b); err != nil {
				return err
			}
			pos = b.Checkpoint
		}
		if len(page.Records) >= r.cfg.BatchSize {
			r.endStall(ctx, &st)
			continue // more to read at once
		}
		wait := r.cfg.PollInterval
		if page.HeldBack {
			wait = min(wait, st.poll())
			r.checkStall(ctx, &st, page, pos)
		} else {
			r.endStall(ctx, &st)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// listen keeps the store's notifications flowing into wake until ctx ends,
// listening again after failures.
func (r *Reader) listen(ctx context.Context, n Notifier, wake chan struct{}) {
	signal := func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	for attempt := 1; ctx.Err() == nil; attempt++ {
		err := n.Listen(ctx, signal)
		if ctx.Err() != nil {
			return
		}
		r.log.WarnContext(ctx, "eventsource: listening for new events failed; polling meanwhile", "error", err)
		if sleep(ctx, r.cfg.Backoff.Delay(attempt)) != nil {
			return
		}
	}
}

// stallTracker follows one fence while it holds the reader back.
type stallTracker struct {
	active   bool
	fence    uint64
	since    time.Time
	reported time.Time
	pid      int
	interval time.Duration
}

func (s *stallTracker) poll() time.Duration {
	if s.interval == 0 {
		s.interval = 10 * time.Millisecond
	} else {
		s.interval *= 2
	}
	return s.interval
}

func (r *Reader) checkStall(ctx context.Context, st *stallTracker, page Page, pos Position) {
	now := time.Now()
	if !st.active || st.fence != page.Fence {
		r.endStall(ctx, st)
		*st = stallTracker{active: true, fence: page.Fence, since: now}
		return
	}
	held := now.Sub(st.since)
	if r.cfg.StallAfter < 0 || held < r.cfg.StallAfter || now.Sub(st.reported) < r.cfg.StallAfter {
		return
	}
	b := Blocker{Transaction: page.Fence}
	if in, ok := r.store.(StallInspector); ok {
		got, err := in.Blocker(ctx, page.Fence)
		switch {
		case err != nil:
			r.log.WarnContext(ctx, "eventsource: cannot name the transaction holding the reader back", "error", err)
		case got.PID == 0 && got.Prepared == "" && got.Started.IsZero():
			return // it ended since the read: the next read will move on
		default:
			b = got
		}
	}
	st.reported = now
	if st.pid != b.PID && st.pid != 0 {
		r.stall.Record(ctx, 0, metric.WithAttributes(attribute.Int("db.pid", st.pid)))
	}
	st.pid = b.PID
	attrs := []any{"transaction", b.Transaction, "pid", b.PID, "held_for", held.Round(time.Millisecond).String(),
		"checkpoint", pos.String()}
	if !b.Started.IsZero() {
		attrs = append(attrs, "transaction_age", now.Sub(b.Started).Round(time.Millisecond).String())
	}
	for _, kv := range [][2]string{{"state", b.State}, {"application", b.Application}, {"query", b.Query}, {"prepared", b.Prepared}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	r.log.WarnContext(ctx, "eventsource: an open transaction holds the event log reader back: committed events wait behind it", attrs...)
	r.stall.Record(ctx, held.Seconds(), metric.WithAttributes(attribute.Int("db.pid", b.PID)))
	if r.cfg.OnStall != nil {
		r.cfg.OnStall(Stall{Blocker: b, HeldFor: held, Checkpoint: pos})
	}
}

func (r *Reader) endStall(ctx context.Context, st *stallTracker) {
	if st.active && !st.reported.IsZero() {
		r.stall.Record(ctx, 0, metric.WithAttributes(attribute.Int("db.pid", st.pid)))
		r.log.InfoContext(ctx, "eventsource: the event log reader is no longer held back",
			"transaction", st.fence, "pid", st.pid, "held_for", time.Since(st.since).Round(time.Millisecond).String())
	}
	*st = stallTracker{}
}
