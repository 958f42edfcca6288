package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
)

// Sentinel errors.
var (
	// ErrInvalidConfig: NewRelay was given a nil store or publisher or an
	// out-of-range setting.
	ErrInvalidConfig = errors.New("outbox: invalid config")
	// ErrRunning: Run was called while the same Relay was already running.
	ErrRunning = errors.New("outbox: relay already running")
)

// Defaults for Config fields left zero.
const (
	DefaultBatchSize       = 500
	DefaultPollInterval    = time.Second
	DefaultMaxAttempts     = 10
	DefaultPublishTimeout  = 20 * time.Second
	DefaultRetention       = time.Hour
	DefaultCleanupInterval = time.Minute
	DefaultCleanupBatch    = 1000
	DefaultStatsInterval   = 10 * time.Second
)

// Config tunes a Relay. The zero value is ready to use; every field documents
// its default.
type Config struct {
	// Name labels the relay's metrics and logs (attribute outbox.name).
	// Default "outbox".
	Name string
	// BatchSize is the most rows claimed and published per Publish call.
	// Default DefaultBatchSize (500). Larger batches raise throughput and
	// the number of duplicates a crash can cause (at most one batch per
	// relay).
	BatchSize int
	// PollInterval is how often the relay looks for rows when nothing wakes
	// it: the fallback when notifications are lost or the store has none,
	// and the pace of retries. Default DefaultPollInterval (1s).
	PollInterval time.Duration
	// DisableNotify ignores the store's Notifier and relies on polling only.
	DisableNotify bool
	// WakeDelay is how long an idle relay waits after a notification before
	// it claims, so that commits arriving close together are published in
	// one batch. It adds up to this much latency and saves a claim per
	// commit under a steady stream of small transactions. Default 0.
	WakeDelay time.Duration
	// MaxAttempts is how many failed attempts park a row (status dead).
	// Default DefaultMaxAttempts (10).
	MaxAttempts int
	// Backoff returns how long a row waits after its attempt-th failure.
	// Default ExponentialBackoff(time.Second, 5*time.Minute).
	Backoff func(attempt int) time.Duration
	// BlockKeyOnPark keeps a key blocked while it has a parked row: nothing
	// after the parked row is published until the row is redriven (then it
	// goes first) or deleted. Per-key order then holds without exception,
	// at the price of a stalled key. When false (the default) the parked row
	// is set aside and the rest of its key flows on; redriving it later
	// publishes it after rows that were enqueued after it.
	BlockKeyOnPark bool
	// Permanent reports whether a publish error means the message can never
	// be published, so its row is parked at once instead of retried.
	// broker.ErrEmptyTopic and broker.ErrMessageTooLarge always are; this
	// function is consulted in addition.
	Permanent func(error) bool
	// Transient reports whether a publish error means the broker, not the
	// message, is the problem, so no attempt is charged and the relay backs
	// off. Errors wrapping broker.ErrUnavailable (what the steadfast
	// adapters report for outages), timeouts and cancellations
	// (context.DeadlineExceeded), closed publishers (broker.ErrClosed),
	// network errors (net.Error, connection refused or reset, EOF) and
	// errors with a Timeout() or Temporary() method returning true always
	// are; this function is consulted in addition, for other adapters'
	// outage errors.
	Transient func(error) bool
	// MaxMessageBytes is the size limit the relay checks before publishing;
	// larger rows are parked. Default broker.DefaultMaxMessageBytes. Set it
	// to the broker's limit.
	MaxMessageBytes int
	// PublishTimeout bounds one Publish call; a call cut short fails with
	// context.DeadlineExceeded, which is transient. Keep it below the
	// adapter's own delivery timeout (30s for broker/kafka) so that a broker
	// that does not answer reads as an outage. A claimed batch holds its rows
	// (and, on PostgreSQL, a transaction) while it is published. When the
	// claim has a deadline (see Relay), the relay starts a one-row Publish
	// call only if PublishTimeout still fits before it: keep PublishTimeout
	// well below the store's claim timeout (the postgres store's
	// ClaimTimeout), or a batch that fails as a whole is never isolated.
	// Default DefaultPublishTimeout (20s).
	PublishTimeout time.Duration
	// DeletePublished deletes rows once the broker accepted them instead of
	// marking them published. Faster, and leaves no trail.
	DeletePublished bool
	// Retention is how long published rows are kept before housekeeping
	// deletes them, in batches of CleanupBatch every CleanupInterval.
	// Default DefaultRetention (1h); negative keeps them forever.
	Retention       time.Duration
	CleanupInterval time.Duration // default DefaultCleanupInterval (1m)
	CleanupBatch    int           // default DefaultCleanupBatch (1000)
	// StatsInterval is how often the backlog gauges (pending rows, oldest
	// pending age, parked rows) are refreshed from the store. Default
	// DefaultStatsInterval (10s); negative disables them.
	StatsInterval time.Duration
	// Logger receives the relay's logs: broker outages, retries, parked
	// rows. Default slog.Default(); pass a logger with a discarding handler
	// to silence it.
	Logger *slog.Logger
	// MeterProvider provides the relay's metrics. Default
	// otel.GetMeterProvider(), which records nothing until the application
	// installs an SDK.
	MeterProvider metric.MeterProvider
	// TracerProvider traces each batch publish. Default
	// otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

func (c Config) withDefaults() (Config, error) {
	switch {
	case c.BatchSize < 0:
		return c, fmt.Errorf("%w: BatchSize %d < 0", ErrInvalidConfig, c.BatchSize)
	case c.MaxAttempts < 0:
		return c, fmt.Errorf("%w: MaxAttempts %d < 0", ErrInvalidConfig, c.MaxAttempts)
	case c.PollInterval < 0:
		return c, fmt.Errorf("%w: PollInterval %v < 0", ErrInvalidConfig, c.PollInterval)
	case c.PublishTimeout < 0:
		return c, fmt.Errorf("%w: PublishTimeout %v < 0", ErrInvalidConfig, c.PublishTimeout)
	case c.WakeDelay < 0:
		return c, fmt.Errorf("%w: WakeDelay %v < 0", ErrInvalidConfig, c.WakeDelay)
	case c.CleanupInterval < 0 || c.CleanupBatch < 0:
		return c, fmt.Errorf("%w: negative cleanup setting", ErrInvalidConfig)
	case c.MaxMessageBytes < 0:
		return c, fmt.Errorf("%w: MaxMessageBytes %d < 0", ErrInvalidConfig, c.MaxMessageBytes)
	}
	if c.Name == "" {
		c.Name = "outbox"
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.Backoff == nil {
		c.Backoff = ExponentialBackoff(time.Second, 5*time.Minute)
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = broker.DefaultMaxMessageBytes
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.CleanupInterval == 0 {
		c.CleanupInterval = DefaultCleanupInterval
	}
	if c.CleanupBatch == 0 {
		c.CleanupBatch = DefaultCleanupBatch
	}
	if c.StatsInterval == 0 {
		c.StatsInterval = DefaultStatsInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	return c, nil
}

// Relay moves rows from a Store to a broker.Publisher.
//
// Guarantees:
//
//   - At least once: a row is marked published (or deleted) only after
//     Publish returned nil for it, in the same store transaction that
//     claimed it. A relay that dies between the two leaves the row pending
//     and it is published again: duplicates are bounded by one batch per
//     crashed relay and carry the same Message.ID, so consumers deduplicate.
//   - Per-key order: the rows of a key are published in ID order, each key by
//     one relay at a time (see Store), and a key's next row is not published
//     while an earlier one is unsent, in flight or waiting for a retry.
//     Within a batch a key's rows go to the broker in one Publish call, in
//     order (after a failed call, one row per call, in order, to isolate the
//     refused row). A parked row is the one exception, governed by BlockKeyOnPark.
//   - Failures: a message the broker refuses is retried with Backoff and
//     parked after MaxAttempts; its key waits meanwhile, other keys flow. A
//     row that can never be published (empty topic, over MaxMessageBytes,
//     malformed, or an error Permanent accepts) is parked at once with the
//     reason. When the broker is unavailable (the error is transient, see
//     Config.Transient) no attempt is charged: rows stay pending, the relay
//     backs off, and the backlog drains when the broker returns.
//
// How failures are pinned on rows: a *broker.PublishError names the failed
// messages, each with its own error. Any other error fails the whole call;
// if it is transient the relay backs off, otherwise it publishes the batch's
// rows one at a time to find the culprits (stopping early if the broker turns
// out to be down, or the claim's deadline nears). Each failed row's error is
// then classified: permanent (park now), transient (charge nothing), or a
// refusal (charge an attempt).
//
// Claims with a deadline: when a Claim implements ClaimDeadline (the postgres
// store's do: the server ends a claim after its ClaimTimeout), the relay
// publishes the claim's rows only while the claim is sure to be held, and
// completes it before the store ends it, so that rows it published are not
// claimed and published again by another relay. It keeps a margin for
// completing the claim, a tenth of the claim's lifetime
// (from the Claim call to the deadline), at most 5s: no Publish call of the
// batch runs past the deadline minus the margin (the batch call is cut short
// there, which counts as transient), and one-at-a-time publishing starts no
// call that PublishTimeout could carry past it. The rows it had no time for
// are released unchanged, with no attempt charged, and go out in a later
// claim; the relay logs a warning when that happens. A Claim without a
// deadline is published as long as its Publish calls take.
//
// Any number of relays, in one process or many, may run against one store.
type Relay struct {
	store Store
	pub   broker.Publisher
	cfg   Config
	log   *slog.Logger
	m     *metrics
	trace trace.Tracer

	wake    chan struct{}
	running atomic.Bool
	retryAt atomic.Int64 // unix nanoseconds of the soonest known retry, 0 if none
}

// retryAtMost makes the loop look for rows no later than t.
func (r *Relay) retryAtMost(t time.Time) {
	n := t.UnixNano()
	for {
		cur := r.retryAt.Load()
		if cur != 0 && cur <= n {
			return
		}
		if r.retryAt.CompareAndSwap(cur, n) {
			return
		}
	}
}

// NewRelay returns a relay that publishes rows of store through pub.
func NewRelay(store Store, pub broker.Publisher, cfg Config) (*Relay, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil Store", ErrInvalidConfig)
	}
	if pub == nil {
		return nil, fmt.Errorf("%w: nil Publisher", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.MeterProvider, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("outbox: metrics: %w", err)
	}
	return &Relay{
		store: store,
		pub:   pub,
		cfg:   cfg,
		log:   cfg.Logger.With("outbox", cfg.Name),
		m:     m,
		trace: cfg.TracerProvider.Tracer(instrumentationName),
		wake:  make(chan struct{}, 1),
	}, nil
}

// Wake makes a running relay look for rows now instead of at its next poll.
// A store's Notifier calls it for you; Wake is for stores without one or for
// tests. It never blocks.
func (r *Relay) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run publishes rows until ctx is cancelled, then finishes the batch in
// flight (its Publish and the store update are not cancelled with ctx, only
// bounded by PublishTimeout) and returns nil. It also listens for the store's
// notifications, refreshes the backlog gauges and deletes published rows
// past Retention. Store and broker errors are logged and retried, never
// returned. Run returns ErrRunning if the relay is already running.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer r.running.Store(false)
	reg, err := r.m.observe()
	if err != nil {
		r.log.Warn("outbox: backlog gauges unavailable", "error", err)
	} else {
		defer func() { _ = reg.Unregister() }()
	}

	var wg sync.WaitGroup
	if n, ok := r.store.(Notifier); ok && !r.cfg.DisableNotify {
		wg.Go(func() { r.listen(ctx, n) })
	}
	wg.Go(func() { r.housekeep(ctx) })
	r.loop(ctx)
	wg.Wait()
	return nil
}

// RunOnce claims and publishes one batch and returns the number of rows it
// claimed. Tools and tests use it to drain an outbox without a background
// loop; it returns an error when the store fails or the broker is down.
func (r *Relay) RunOnce(ctx context.Context) (int, error) {
	res, err := r.cycle(ctx)
	if err != nil {
		return res.claimed, err
	}
	if res.outage != nil {
		return res.claimed, fmt.Errorf("outbox: broker unavailable: %w", res.outage)
	}
	return res.claimed, nil
}

func (r *Relay) loop(ctx context.Context) {
	poll := time.NewTimer(r.cfg.PollInterval)
	defer poll.Stop()
	failures := 0
	for ctx.Err() == nil {
		res, err := r.cycle(ctx)
		var pause time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			failures++
			pause = outageBackoff(failures)
			r.log.Error("outbox: store failed; retrying", "error", err, "retry_in", pause)
		case res.outage != nil:
			failures++
			pause = outageBackoff(failures)
			r.log.Warn("outbox: broker unavailable; rows stay pending", "error", res.outage,
				"rows", res.claimed, "retry_in", pause)
		default:
			failures = 0
			if res.claimed > 0 && !res.stalled {
				continue // there may be more
			}
		}
		if pause > 0 {
			// Notifications do not cut an outage pause short.
			if !sleep(ctx, pause) {
				return
			}
			continue
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		wait := r.cfg.PollInterval
		if at := r.retryAt.Load(); at != 0 {
			// A failed row becomes due before the next poll: look then.
			switch d := time.Until(time.Unix(0, at)); {
			case d <= 0:
				r.retryAt.CompareAndSwap(at, 0)
				wait = time.Millisecond
			case d < wait:
				wait = d
			}
		}
		poll.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			if r.cfg.WakeDelay > 0 && !sleep(ctx, r.cfg.WakeDelay) {
				return
			}
		case <-poll.C:
		}
	}
}

// outageBackoff is the relay's pause after n consecutive store or broker
// outages: 50ms doubling to 5s.
var outageBackoff = broker.DoublingBackoff(50*time.Millisecond, 5*time.Second)

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (r *Relay) listen(ctx context.Context, n Notifier) {
	failures := 0
	for ctx.Err() == nil {
		start := time.Now()
		err := n.Listen(ctx, r.Wake)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			failures = 0 // it worked for a while: retry soon
		}
		failures++
		pause := min(time.Duration(failures)*time.Second, 30*time.Second)
		r.log.Warn("outbox: notifications lost; polling until they are back", "error", err, "retry_in", pause)
		// Rows committed while the listener was down are found by the next
		// poll; wake once so that happens now.
		r.Wake()
		if !sleep(ctx, pause) {
			return
		}
	}
}

func (r *Relay) housekeep(ctx context.Context) {
	var statsC, cleanC <-chan time.Time
	if r.cfg.StatsInterval > 0 {
		r.refreshStats(ctx)
		t := time.NewTicker(r.cfg.StatsInterval)
		defer t.Stop()
		statsC = t.C
	}
	if r.cfg.Retention > 0 && !r.cfg.DeletePublished {
		t := time.NewTicker(r.cfg.CleanupInterval)
		defer t.Stop()
		cleanC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-statsC:
			r.refreshStats(ctx)
		case <-cleanC:
			if _, err := r.Cleanup(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("outbox: cleanup failed", "error", err)
			}
		}
	}
}

func (r *Relay) refreshStats(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := r.store.Stats(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("outbox: reading backlog stats failed", "error", err)
		}
		return
	}
	r.m.stats.Store(&st)
}

// Cleanup deletes published rows older than Retention, in batches of
// CleanupBatch, and returns how many it deleted. Run calls it every
// CleanupInterval; call it yourself when you run the relay with RunOnce.
func (r *Relay) Cleanup(ctx context.Context) (int, error) {
	if r.cfg.Retention < 0 {
		return 0, nil
	}
	before := time.Now().Add(-r.cfg.Retention)
	total := 0
	for {
		n, err := r.store.Cleanup(ctx, before, r.cfg.CleanupBatch)
		total += n
		if err != nil {
			return total, fmt.Errorf("outbox: cleanup: %w", err)
		}
		if n < r.cfg.CleanupBatch {
			return total, nil
		}
	}
}

// cycleResult says what one claim-publish-complete cycle did.
type cycleResult struct {
	claimed int
	// outage is the broker error when the broker failed as a whole: the
	// rows it concerned were released unchanged.
	outage error
	// stalled is set when the claim's deadline came before any row was
	// published or charged: the loop then waits for its next poll instead
	// of claiming the same rows again at once.
	stalled bool
}

// maxClaimMargin caps claimMargin.
const maxClaimMargin = 5 * time.Second

// claimMargin is the part of a claim's lifetime that the relay keeps for
// completing the claim: it publishes the claim's rows only until the
// deadline minus the margin. Completing takes one round trip to the store,
// milliseconds when all is well; a tenth of the lifetime covers a slow or
// loaded store and scales down with short claim timeouts instead of eating
// them whole (200ms of a 2s one), and the cap keeps long ones from wasting
// publishing time (5s, not 12s, of the postgres store's default 2m).
func claimMargin(lifetime time.Duration) time.Duration {
	return min(max(lifetime, 0)/10, maxClaimMargin)
}

// cycle claims one batch, publishes it and records the outcome.
func (r *Relay) cycle(ctx context.Context) (cycleResult, error) {
	start := time.Now()
	claim, err := r.store.Claim(ctx, ClaimRequest{Limit: r.cfg.BatchSize, DeadBlocksKey: r.cfg.BlockKeyOnPark})
	if err != nil {
		return cycleResult{}, fmt.Errorf("outbox: claim: %w", err)
	}
	recs := claim.Records()
	// stop is when publishing must end for the claim to be completed while
	// it is surely held; zero when the store never ends it on its own.
	var stop time.Time
	if cd, ok := claim.(ClaimDeadline); ok {
		if deadline, ok := cd.Deadline(); ok {
			stop = deadline.Add(-claimMargin(deadline.Sub(start)))
		}
	}
	// From here on the batch is finished even when ctx is cancelled: a
	// publish cut short would only produce duplicates.
	wctx := context.WithoutCancel(ctx)
	res := cycleResult{claimed: len(recs)}
	var out Outcome
	if len(recs) > 0 {
		var cut bool
		out, res.outage, cut = r.publish(wctx, recs, stop)
		res.stalled = cut && len(out.Published) == 0 && len(out.Failed) == 0
	}
	cctx, cancel := context.WithTimeout(wctx, r.cfg.PublishTimeout)
	defer cancel()
	if len(out.Published) == 0 && len(out.Failed) == 0 {
		if err := claim.Release(cctx); err != nil {
			return res, fmt.Errorf("outbox: release claim: %w", err)
		}
		return res, nil
	}
	out.Delete = r.cfg.DeletePublished
	if err := claim.Complete(cctx, out); err != nil {
		// The rows stay pending; the ones the broker accepted will be
		// published again.
		r.m.completeFailed(wctx, len(out.Published))
		return res, fmt.Errorf("outbox: complete batch (%d rows published, will be published again): %w", len(out.Published), err)
	}
	r.m.record(wctx, out)
	for _, f := range out.Failed {
		if f.Park {
			r.log.Warn("outbox: row parked", "id", f.ID, "reason", f.Reason)
			continue
		}
		r.log.Info("outbox: publish failed; will retry", "id", f.ID, "reason", f.Reason, "retry_in", f.RetryAfter)
		r.retryAtMost(time.Now().Add(f.RetryAfter))
	}
	return res, nil
}

// row is one claimed record on its way through publish.
type row struct {
	rec   Record
	state rowState
	err   error
}

type rowState int

const (
	rowHeld      rowState = iota // released unchanged: behind a failure of its key, or not attempted
	rowSend                      // being published
	rowBad                       // can never be published: parked if its key's earlier rows publish
	rowPublished                 // the broker accepted it
	rowFailed                    // the broker did not accept it; err says why
)

// errClass is what a publish error means for the row it concerns.
type errClass int

const (
	classRefused   errClass = iota // the broker refused this message: charge an attempt
	classPermanent                 // the message can never be published: park it
	classTransient                 // the broker is unavailable: charge nothing
)

func (r *Relay) classify(err error) errClass {
	switch {
	case r.permanent(err):
		return classPermanent
	case r.transient(err):
		return classTransient
	}
	return classRefused
}

func (r *Relay) permanent(err error) bool {
	if errors.Is(err, broker.ErrEmptyTopic) || errors.Is(err, broker.ErrMessageTooLarge) || errors.Is(err, broker.ErrInvalidMessage) {
		return true
	}
	return r.cfg.Permanent != nil && r.cfg.Permanent(err)
}

// transient reports errors that say the broker, not the message, is the
// problem: timeouts, cancellations, closed publishers, network errors, and
// errors that report themselves as temporary or timeouts.
func (r *Relay) transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, broker.ErrUnavailable) || errors.Is(err, broker.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var tmp interface{ Temporary() bool }
	if errors.As(err, &tmp) && tmp.Temporary() {
		return true
	}
	var to interface{ Timeout() bool }
	if errors.As(err, &to) && to.Timeout() {
		return true
	}
	return r.cfg.Transient != nil && r.cfg.Transient(err)
}

// publish publishes recs and returns the store update, and the broker error
// when the broker was (at least partly) unavailable, so the relay backs off.
// When stop is not zero, no Publish call runs past it, and cut reports that
// rows were held because it came.
func (r *Relay) publish(ctx context.Context, recs []Record, stop time.Time) (out Outcome, outage error, cut bool) {
	rows := make([]*row, len(recs))
	badKey := make(map[string]bool)
	var send []*row
	for i, rec := range recs {
		w := &row{rec: rec}
		rows[i] = w
		key := rec.Message.Key
		if key != "" && badKey[key] {
			continue // held behind a bad row of its key
		}
		if reason := r.check(rec); reason != nil {
			w.state, w.err = rowBad, reason
			if key != "" {
				badKey[key] = true
			}
			continue
		}
		w.state = rowSend
		send = append(send, w)
	}

	if len(send) > 0 && !stop.IsZero() && !time.Now().Before(stop) {
		// The claim took (nearly) its whole lifetime to be made: there is no
		// time to publish anything.
		r.log.Warn("outbox: claim deadline passed before publishing; rows left for a later claim",
			"rows", len(send), "publish_until", stop)
		for _, w := range send {
			w.state = rowHeld
		}
		send, cut = nil, true
	}
	if len(send) > 0 {
		if !stop.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, stop)
			defer cancel()
		}
		start := time.Now()
		err := r.attempt(ctx, send)
		r.m.batchDuration(ctx, time.Since(start), len(send), err == nil)
		switch {
		case err == nil:
		case r.transient(err):
			for _, w := range send {
				w.state = rowHeld
			}
			outage = err
		case len(send) == 1:
			send[0].state, send[0].err = rowFailed, err
		default:
			// The call failed as a whole without saying which message is
			// at fault: publish one at a time to find out.
			if r.isolate(ctx, send, stop) {
				cut = true
			}
		}
	}
	out, transientErr := r.outcome(rows)
	if outage == nil {
		outage = transientErr
	}
	return out, outage, cut
}

// check returns why rec can never be published, or nil.
func (r *Relay) check(rec Record) error {
	if rec.Malformed != "" {
		return fmt.Errorf("outbox: malformed row: %s", rec.Malformed)
	}
	if err := rec.Message.Validate(r.cfg.MaxMessageBytes); err != nil {
		return fmt.Errorf("outbox: invalid message: %w", err)
	}
	if rec.Message.ID == "" {
		return errors.New("outbox: invalid message: empty ID")
	}
	return nil
}

// attempt publishes rows in one call. On nil every row is published. When
// the broker answers with a *broker.PublishError naming valid indexes, the
// named rows fail with their errors, the others are published, and attempt
// returns nil. Any other error is returned with the rows left as they were.
func (r *Relay) attempt(ctx context.Context, rows []*row) error {
	msgs := make([]broker.Message, len(rows))
	for i, w := range rows {
		msgs[i] = w.rec.Message
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	ctx, span := r.trace.Start(pctx, "outbox publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.Int("messaging.batch.message_count", len(msgs)),
			attribute.String("outbox.name", r.cfg.Name)))
	err := r.pub.Publish(ctx, msgs...)
	if err != nil {
		span.RecordError(err)
	}
	span.End()
	if err == nil {
		for _, w := range rows {
			w.state = rowPublished
		}
		return nil
	}
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failures) == 0 {
		return err
	}
	failed := make(map[int]error, len(pe.Failures))
	for _, f := range pe.Failures {
		if f.Index < 0 || f.Index >= len(rows) {
			return err // not a report we can trust row by row
		}
		ferr := f.Err
		if ferr == nil {
			ferr = errors.New("broker refused the message")
		}
		failed[f.Index] = ferr
	}
	for i, w := range rows {
		if ferr, ok := failed[i]; ok {
			w.state, w.err = rowFailed, ferr
		} else {
			w.state = rowPublished
		}
	}
	return nil
}

// isolate publishes rows one at a time after a call carrying all of them
// failed without naming the culprit. Each key stops at its first failure.
// After two transient failures without any success (the broker is down), or
// three in all, the remaining rows are held. When stop is not zero, a call
// that PublishTimeout could carry past stop is not started: the remaining
// rows are held and isolate reports true.
func (r *Relay) isolate(ctx context.Context, rows []*row, stop time.Time) bool {
	for _, w := range rows {
		w.state = rowHeld
	}
	failedKey := make(map[string]bool)
	succeeded, transient, tried := false, 0, 0
	for i, w := range rows {
		key := w.rec.Message.Key
		if key != "" && failedKey[key] {
			continue
		}
		if !stop.IsZero() && time.Now().Add(r.cfg.PublishTimeout).After(stop) {
			left := 0
			for _, x := range rows[i:] {
				if k := x.rec.Message.Key; k == "" || !failedKey[k] {
					left++
				}
			}
			if tried == 0 {
				r.log.Warn("outbox: no time to publish one row before the claim's deadline; rows left for a later claim "+
					"(PublishTimeout must be well below the store's claim timeout)",
					"rows", left, "publish_timeout", r.cfg.PublishTimeout, "publish_until", stop)
			} else {
				r.log.Warn("outbox: claim deadline near; stopped publishing one row at a time, rows left for a later claim",
					"tried", tried, "rows", left, "publish_until", stop)
			}
			return true
		}
		tried++
		w.state = rowSend
		if err := r.attempt(ctx, []*row{w}); err != nil {
			w.state, w.err = rowFailed, err
		}
		if w.state == rowPublished {
			succeeded = true
			continue
		}
		if key != "" {
			failedKey[key] = true
		}
		if r.transient(w.err) {
			// The broker is down, or partly: stop before the claim has been
			// held for many publish timeouts.
			if transient++; transient >= 3 || !succeeded && transient >= 2 {
				return false
			}
		}
	}
	return false
}

// outcome turns the rows' states into the store update, and returns the
// error of a transient failure if there was one. For each key, in ID order:
// published rows are published; the first row that failed is charged (or
// parked, when the error is permanent or MaxAttempts is reached), or held
// when the failure was transient; every later unpublished row of the key is
// held. A bad row is parked only when every earlier row of its key in the
// batch was published, so a parked row never sits behind an unpublished one.
func (r *Relay) outcome(rows []*row) (Outcome, error) {
	var out Outcome
	var transientErr error
	stopped := make(map[string]bool) // keys with an unpublished row so far
	for _, w := range rows {
		key := w.rec.Message.Key
		blocked := key != "" && stopped[key]
		switch w.state {
		case rowPublished:
			out.Published = append(out.Published, w.rec.ID)
			if blocked {
				r.log.Warn("outbox: broker accepted a message after refusing an earlier one of its key; key order is broken",
					"id", w.rec.ID, "key", key)
			}
			continue
		case rowFailed:
			if r.classify(w.err) == classTransient {
				transientErr = w.err
			} else if !blocked {
				out.Failed = append(out.Failed, r.failure(w.rec, w.err))
			}
		case rowBad:
			if !blocked {
				out.Failed = append(out.Failed, Failure{ID: w.rec.ID, Reason: w.err.Error(), Park: true})
			}
		}
		if key != "" {
			stopped[key] = true
		}
	}
	return out, transientErr
}

func (r *Relay) failure(rec Record, err error) Failure {
	attempts := rec.Attempts + 1
	f := Failure{ID: rec.ID, Reason: err.Error()}
	switch {
	case r.permanent(err):
		f.Park = true
		f.Reason = "permanent publish error: " + f.Reason
	case attempts >= r.cfg.MaxAttempts:
		f.Park = true
		f.Reason = fmt.Sprintf("gave up after %d attempts: %s", attempts, f.Reason)
	default:
		f.RetryAfter = r.cfg.Backoff(attempts)
	}
	return f
}
