package eventsource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Repository defaults, for zero RepositoryConfig fields.
const (
	// DefaultMaxAttempts is how many times Handle decides and appends
	// before giving up on conflicts.
	DefaultMaxAttempts = 5
	// DefaultSnapshotVersion is the schema version of snapshot states.
	DefaultSnapshotVersion = 1
)

// DefaultRetryBackoff is the wait between Handle's attempts when
// RepositoryConfig.Backoff is zero: short, since a conflict means another
// writer just finished.
var DefaultRetryBackoff = broker.Backoff{Initial: 5 * time.Millisecond, Max: 500 * time.Millisecond}

// SnapshotInfo is what a SnapshotStrategy decides on, after an append.
type SnapshotInfo struct {
	StreamID string
	// Version is the stream's version after the append.
	Version int64
	// Since counts the events after the snapshot the state was loaded from
	// (all events when there was none), the appended ones included.
	Since int64
	// Events are the events just appended.
	Events []any
}

// SnapshotStrategy says whether to snapshot a stream's state after an
// append. Every and any predicate of your own (a func of this type) are
// strategies.
type SnapshotStrategy func(SnapshotInfo) bool

// Every snapshots a stream once n events have been appended since its last
// snapshot. n < 1 never snapshots.
func Every(n int64) SnapshotStrategy {
	return func(i SnapshotInfo) bool { return n >= 1 && i.Since >= n }
}

// RepositoryConfig tunes a Repository. The zero value is ready to use: five
// attempts, short backoff, no snapshots.
type RepositoryConfig[S any] struct {
	// MaxAttempts bounds Handle's attempts (decide and append) when
	// appends conflict, and its retries of an append that failed with
	// ErrUnavailable. Default DefaultMaxAttempts; 1 means no retry.
	MaxAttempts int
	// Backoff is the wait between attempts. Zero means DefaultRetryBackoff.
	Backoff broker.Backoff
	// Snapshot decides when to store a snapshot of the state (see Every).
	// Nil disables snapshots: loads then also ignore stored ones.
	Snapshot SnapshotStrategy
	// SnapshotVersion is the schema version of the state's encoding. Bump
	// it when S changes incompatibly: snapshots of other versions are then
	// upcast by UpcastSnapshot, or ignored (the stream is replayed from its
	// events), never misread. Default DefaultSnapshotVersion.
	SnapshotVersion int
	// UpcastSnapshot decodes a snapshot of an older SnapshotVersion. Nil
	// ignores such snapshots. An error ignores the snapshot too (logged).
	UpcastSnapshot func(version int, data []byte) (S, error)
	// Logger receives failed snapshot writes and ignored snapshots. Nil
	// means slog.Default().
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to the OpenTelemetry global
	// providers.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// Repository runs commands against streams with a Decider: load the state
// (latest snapshot plus the events after it, upcast), decide, and append
// the new events expecting the version it loaded. On a conflict it loads
// again and decides again, up to MaxAttempts times.
//
// Every attempt reads and appends through the Repository's Store. With a
// store that runs each append in its own transaction (the default), each
// attempt is a fresh transaction. Bound to a transaction of yours (With),
// the events commit with your other writes; a conflict then usually means
// retrying your whole transaction (PostgreSQL keeps ordering appends by
// transaction, see eventsource/postgres).
//
// A Repository is safe for concurrent use.
type Repository[S, C, E any] struct {
	store   Store
	reg     *Registry
	d       Decider[S, C, E]
	cfg     RepositoryConfig[S]
	log     *slog.Logger
	tracer  trace.Tracer
	metrics *repoMetrics
}

type repoMetrics struct {
	conflicts metric.Int64Counter
	snapFail  metric.Int64Counter
}

// Metrics of a Repository.
const (
	// MetricConflicts counts appends of Handle that failed with
	// ErrConcurrency.
	MetricConflicts = "steadfast.eventsource.conflicts"
	// MetricSnapshotFailures counts snapshot writes that failed.
	MetricSnapshotFailures = "steadfast.eventsource.snapshot.failures"
)

// NewRepository returns a repository for streams of d, reading and
// appending through store and encoding with reg. It checks reg (Check) and
// the config; errors wrap ErrInvalidRegistry or ErrInvalidConfig.
func NewRepository[S, C, E any](store Store, reg *Registry, d Decider[S, C, E], cfg RepositoryConfig[S]) (*Repository[S, C, E], error) {
	switch {
	case store == nil:
		return nil, fmt.Errorf("%w: nil store", ErrInvalidConfig)
	case reg == nil:
		return nil, fmt.Errorf("%w: nil registry", ErrInvalidConfig)
	case d.Decide == nil || d.Evolve == nil:
		return nil, fmt.Errorf("%w: the decider needs Decide and Evolve", ErrInvalidConfig)
	case cfg.MaxAttempts < 0:
		return nil, fmt.Errorf("%w: MaxAttempts %d < 0", ErrInvalidConfig, cfg.MaxAttempts)
	case cfg.SnapshotVersion < 0:
		return nil, fmt.Errorf("%w: SnapshotVersion %d < 0", ErrInvalidConfig, cfg.SnapshotVersion)
	}
	if err := cfg.Backoff.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := reg.Check(); err != nil {
		return nil, err
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Backoff == (broker.Backoff{}) {
		cfg.Backoff = DefaultRetryBackoff
	}
	if cfg.SnapshotVersion == 0 {
		cfg.SnapshotVersion = DefaultSnapshotVersion
	}
	r := &Repository[S, C, E]{store: store, reg: reg, d: d, cfg: cfg, log: telemetry.Logger(cfg.Logger),
		tracer: telemetry.Tracer(cfg.TracerProvider, "eventsource"), metrics: &repoMetrics{}}
	m := telemetry.Meter(cfg.MeterProvider, "eventsource")
	var err error
	if r.metrics.conflicts, err = m.Int64Counter(MetricConflicts, metric.WithDescription("appends that failed with a concurrency conflict")); err != nil {
		return nil, err
	}
	if r.metrics.snapFail, err = m.Int64Counter(MetricSnapshotFailures, metric.WithDescription("snapshot writes that failed")); err != nil {
		return nil, err
	}
	return r, nil
}

// With returns a repository like r that reads and appends through store: a
// view of r's store bound to your transaction (eventsource/postgres:
// Store.In(tx); eventsource/memory: a Tx), so that the events commit with
// your other writes. Snapshots still go through r's store.
func (r *Repository[S, C, E]) With(store Store) *Repository[S, C, E] {
	c := *r
	c.store = store
	return &c
}

// Loaded is a stream's state as a Repository loaded it.
type Loaded[S any] struct {
	State S
	// Version is the stream's version the state includes; 0 for a stream
	// with no events.
	Version int64
	// Snapshot is the version of the snapshot the load started from, 0 when
	// it replayed the stream from its first event.
	Snapshot int64
	// EventsRead counts the events read from the store (the tail after the
	// snapshot, plus the snapshot's own event that checks it).
	EventsRead int
	// Events counts the events folded into the state (after upcasting).
	Events int
	// LastEventID is the ID of the event at Version.
	LastEventID string
}

// Load returns the current state of a stream: its latest valid snapshot
// (when snapshots are enabled) plus the events after it, upcast and folded
// with Evolve. A stream with no events loads as the initial state at
// version 0. A deleted stream fails with ErrStreamDeleted, a shredded one
// with ErrShredded, a truncated one without a snapshot covering the removed
// events with ErrTruncated, an event of another Go type than E with
// ErrUndecodable.
func (r *Repository[S, C, E]) Load(ctx context.Context, streamID string) (Loaded[S], error) {
	return r.load(ctx, streamID, ReadOptions{}, r.cfg.Snapshot != nil)
}

// LoadAsOf returns the state of a stream as it was at opts.AsOfVersion or
// opts.AsOfTime (a temporal query). Other fields of opts are ignored. A
// snapshot is used only for a version bound at or after it.
func (r *Repository[S, C, E]) LoadAsOf(ctx context.Context, streamID string, opts ReadOptions) (Loaded[S], error) {
	opts = ReadOptions{AsOfVersion: opts.AsOfVersion, AsOfTime: opts.AsOfTime}
	return r.load(ctx, streamID, opts, r.cfg.Snapshot != nil && opts.AsOfTime.IsZero())
}

// errStaleSnapshot: the snapshot does not match the stream; replay it.
var errStaleSnapshot = errors.New("stale snapshot")

func (r *Repository[S, C, E]) load(ctx context.Context, streamID string, opts ReadOptions, useSnapshot bool) (Loaded[S], error) {
	if err := ValidateStreamID(streamID); err != nil {
		return Loaded[S]{}, err
	}
	if useSnapshot {
		if snap, ok := r.snapshot(ctx, streamID); ok && (opts.AsOfVersion == 0 || snap.Version <= opts.AsOfVersion) {
			l, err := r.replay(ctx, streamID, opts, &snap)
			if !errors.Is(err, errStaleSnapshot) {
				return l, err
			}
			r.log.InfoContext(ctx, "eventsource: ignoring a snapshot that does not match its stream",
				"stream", streamID, "snapshot_version", snap.Version)
		}
	}
	return r.replay(ctx, streamID, opts, nil)
}

// replay folds the stream's events, from the snapshot when snap is not nil.
// The first event read is the snapshot's own, which must carry the ID the
// snapshot names; else the result is errStaleSnapshot.
func (r *Repository[S, C, E]) replay(ctx context.Context, streamID string, opts ReadOptions, snap *loadedSnapshot[S]) (Loaded[S], error) {
	l := Loaded[S]{State: r.d.initial()}
	opts.Minimal = true
	next := int64(1)
	if snap != nil {
		l.State, l.Version, l.Snapshot, l.LastEventID = snap.state, snap.Version, snap.Version, snap.EventID
		opts.From, next = snap.Version, snap.Version
	}
	var typeErr error
	fold := func(v any, _ *entry) error {
		e, ok := v.(E)
		if !ok {
			var want *E
			typeErr = fmt.Errorf("event %T is not a %v", v, reflectTypeName(want))
			return typeErr
		}
		l.State = r.d.Evolve(l.State, e)
		l.Events++
		return nil
	}
	for rec, err := range r.store.ReadStream(ctx, streamID, opts) {
		if err != nil {
			if errors.Is(err, ErrStreamNotFound) {
				if snap != nil {
					return l, errStaleSnapshot
				}
				return Loaded[S]{State: r.d.initial()}, nil
			}
			return Loaded[S]{}, err
		}
		l.EventsRead++
		if rec.Version != next {
			if snap != nil {
				return l, errStaleSnapshot
			}
			return Loaded[S]{}, fmt.Errorf("%w: stream %q starts at version %d and no snapshot covers the events before it",
				ErrTruncated, streamID, rec.Version)
		}
		next++
		if rec.Shredded {
			return Loaded[S]{}, fmt.Errorf("%w: stream %q", ErrShredded, streamID)
		}
		if snap != nil && rec.Version == snap.Version {
			if rec.ID != snap.EventID {
				return l, errStaleSnapshot
			}
			continue
		}
		if err := r.reg.each(&rec, fold); err != nil {
			if err == typeErr {
				err = r.reg.decodeError(&rec, err)
			}
			return Loaded[S]{}, err
		}
		l.Version, l.LastEventID = rec.Version, rec.ID
	}
	if snap != nil && l.EventsRead == 0 {
		return l, errStaleSnapshot
	}
	return l, nil
}

type loadedSnapshot[S any] struct {
	Snapshot
	state S
}

// snapshot returns the stream's stored snapshot, decoded, when it is usable.
// A snapshot is a cache: failures are logged and the stream is replayed.
func (r *Repository[S, C, E]) snapshot(ctx context.Context, streamID string) (loadedSnapshot[S], bool) {
	s, ok, err := r.store.LoadSnapshot(ctx, streamID)
	if err != nil {
		if ctx.Err() == nil {
			r.log.WarnContext(ctx, "eventsource: cannot read snapshot; replaying the stream", "stream", streamID, "error", err)
		}
		return loadedSnapshot[S]{}, false
	}
	if !ok {
		return loadedSnapshot[S]{}, false
	}
	ls := loadedSnapshot[S]{Snapshot: s}
	switch {
	case s.SchemaVersion == r.cfg.SnapshotVersion:
		err = r.reg.codec.Unmarshal(s.Data, &ls.state)
	case s.SchemaVersion < r.cfg.SnapshotVersion && r.cfg.UpcastSnapshot != nil:
		ls.state, err = r.cfg.UpcastSnapshot(s.SchemaVersion, s.Data)
	default:
		r.log.DebugContext(ctx, "eventsource: ignoring a snapshot of another state schema version",
			"stream", streamID, "snapshot_schema_version", s.SchemaVersion, "schema_version", r.cfg.SnapshotVersion)
		return loadedSnapshot[S]{}, false
	}
	if err != nil {
		r.log.WarnContext(ctx, "eventsource: cannot decode snapshot; replaying the stream",
			"stream", streamID, "snapshot_schema_version", s.SchemaVersion, "error", err)
		return loadedSnapshot[S]{}, false
	}
	return ls, true
}

// Result is the outcome of Handle.
type Result[S, E any] struct {
	// State is the stream's state after the new events.
	State S
	// Version is the stream's version after the append (the loaded version
	// when the command caused no events).
	Version int64
	// Events are the events the command caused and the append stored; none
	// when Decide returned none.
	Events []E
	// Append is the store's answer: versions and global positions.
	Append AppendResult
	// Attempts is how many times the command was decided.
	Attempts int
}

// Position returns the global position of the last appended event, for
// read-your-writes: a projection whose checkpoint is at or after it
// reflects the command. Zero when the command caused no events.
func (r Result[S, E]) Position() Position { return r.Append.Position() }

// Handle runs cmd against the stream: it loads the state, decides, and
// appends the events expecting the loaded version. The events carry the
// metadata of ctx (WithMetadata, CausedBy) and its trace context.
//
// A refusal by Decide is returned as it is and nothing is appended. When
// the append conflicts (another writer appended first), Handle waits
// (Backoff), loads again and decides again, up to MaxAttempts times, then
// fails with an error wrapping ErrTooManyAttempts and the last
// *ConcurrencyError. When the store fails with ErrUnavailable, Handle
// retries the same append (same event IDs): if the first one committed, the
// retry returns its result instead of appending twice.
//
// After the append, the state is snapshotted when the SnapshotStrategy
// says so; a failed snapshot write is logged and counted
// (MetricSnapshotFailures), never returned: the append has succeeded.
func (r *Repository[S, C, E]) Handle(ctx context.Context, streamID string, cmd C) (Result[S, E], error) {
	ctx, span := r.tracer.Start(ctx, "handle "+streamID, trace.WithAttributes(attribute.String("steadfast.stream_id", streamID)))
	defer span.End()
	res, err := r.handle(ctx, streamID, cmd)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return res, err
}

func (r *Repository[S, C, E]) handle(ctx context.Context, streamID string, cmd C) (Result[S, E], error) {
	var conflict error
	for attempt := 1; attempt <= r.cfg.MaxAttempts; attempt++ {
		if attempt > 1 {
			if err := sleep(ctx, r.cfg.Backoff.Delay(attempt-1)); err != nil {
				return Result[S, E]{}, err
			}
		}
		l, err := r.Load(ctx, streamID)
		if err != nil {
			return Result[S, E]{}, err
		}
		events, err := r.d.Decide(l.State, cmd)
		if err != nil {
			return Result[S, E]{}, err
		}
		if len(events) == 0 {
			return Result[S, E]{State: l.State, Version: l.Version, Attempts: attempt}, nil
		}
		data := make([]EventData, len(events))
		for i, e := range events {
			if data[i], err = r.reg.Encode(ctx, e); err != nil {
				return Result[S, E]{}, err
			}
			data[i].ID = broker.NewID()
		}
		app, err := r.appendRetrying(ctx, StreamAppend{StreamID: streamID, Expected: ExpectedVersion(l.Version), Events: data})
		if errors.Is(err, ErrConcurrency) {
			r.metrics.conflicts.Add(ctx, 1)
			conflict = err
			continue
		}
		if err != nil {
			return Result[S, E]{}, err
		}
		res := Result[S, E]{State: r.d.Fold(l.State, events...), Version: app.Version, Events: events, Append: app, Attempts: attempt}
		r.maybeSnapshot(ctx, streamID, l, res, data[len(data)-1].ID)
		return res, nil
	}
	return Result[S, E]{}, fmt.Errorf("%w: stream %q: %d attempts: %w", ErrTooManyAttempts, streamID, r.cfg.MaxAttempts, conflict)
}

// appendRetrying appends a, retrying the same append while the store is
// unavailable: appends of the same event IDs are exact, so a retry of a
// committed append returns it.
func (r *Repository[S, C, E]) appendRetrying(ctx context.Context, a StreamAppend) (AppendResult, error) {
	for attempt := 1; ; attempt++ {
		res, err := r.store.Append(ctx, a)
		if err == nil {
			return res[0], nil
		}
		if !errors.Is(err, ErrUnavailable) || attempt >= r.cfg.MaxAttempts || ctx.Err() != nil {
			return AppendResult{}, err
		}
		r.log.WarnContext(ctx, "eventsource: store unavailable; retrying the append", "stream", a.StreamID, "attempt", attempt, "error", err)
		if err := sleep(ctx, r.cfg.Backoff.Delay(attempt)); err != nil {
			return AppendResult{}, err
		}
	}
}

func (r *Repository[S, C, E]) maybeSnapshot(ctx context.Context, streamID string, l Loaded[S], res Result[S, E], lastID string) {
	if r.cfg.Snapshot == nil {
		return
	}
	evs := make([]any, len(res.Events))
	for i, e := range res.Events {
		evs[i] = e
	}
	if !r.cfg.Snapshot(SnapshotInfo{StreamID: streamID, Version: res.Version, Since: res.Version - l.Snapshot, Events: evs}) {
		return
	}
	if err := r.saveSnapshot(ctx, streamID, res.State, res.Version, lastID); err != nil {
		r.metrics.snapFail.Add(ctx, 1)
		r.log.WarnContext(ctx, "eventsource: snapshot not written", "stream", streamID, "version", res.Version, "error", err)
	}
}

func (r *Repository[S, C, E]) saveSnapshot(ctx context.Context, streamID string, state S, version int64, eventID string) error {
	data, err := r.reg.codec.Marshal(state)
	if err != nil {
		return fmt.Errorf("eventsource: encode snapshot of %q: %w", streamID, err)
	}
	return r.store.SaveSnapshot(ctx, Snapshot{StreamID: streamID, Version: version, EventID: eventID,
		SchemaVersion: r.cfg.SnapshotVersion, Data: data, Time: time.Now()})
}

// Snapshot loads the stream and stores a snapshot of its state now,
// whatever the strategy (snapshots need not be enabled). Use it after
// committing a transaction that Handle ran in (With), or to snapshot
// streams in the background. A stream with no events is not snapshotted.
func (r *Repository[S, C, E]) Snapshot(ctx context.Context, streamID string) (Loaded[S], error) {
	l, err := r.Load(ctx, streamID)
	if err != nil || l.Version == 0 {
		return l, err
	}
	return l, r.saveSnapshot(ctx, streamID, l.State, l.Version, l.LastEventID)
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

func reflectTypeName[T any](*T) string { return reflect.TypeFor[T]().String() }
