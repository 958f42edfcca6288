package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Sentinel errors.
var (
	// ErrInvalidConfig: NewRelay was given a nil store or publisher or an
	// out-of-range setting.
	ErrInvalidConfig = errors.New("outbox: invalid config")
	// ErrRunning: Run was called while the same Relay was already running.
	ErrRunning = errors.New("outbox: relay already running")
)

// Relay moves rows from a Store to a broker.Publisher.
//
// Guarantees:
//
//   - At least once: a row is deleted (or marked published) only after
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
//     row that can never be published (empty topic, over the publisher's
//     size limit, malformed, or an error Permanent accepts) is parked at
//     once with the reason. When the broker is unavailable (the error is transient, see
//     Config.Transient) no attempt is charged: rows stay pending, the relay
//     backs off, and the backlog drains when the broker returns.
//   - One trace per message: a row carries the trace context of the request
//     that enqueued it. Once an OpenTelemetry SDK records spans, the relay
//     publishes each such message in a "publish <topic>" producer span, the
//     child of that context (linked to the batch's "outbox publish" span),
//     and the message leaves with the publish span's context, so its
//     consumers' "process <topic>" spans continue the request's trace.
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
	max   int // the publisher's size limit: larger rows are parked unsent
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
	r := &Relay{
		store: store,
		pub:   pub,
		cfg:   cfg,
		max:   maxMessageBytes(pub),
		log:   cfg.Logger.With("outbox", cfg.Name),
		m:     m,
		trace: telemetry.Tracer(cfg.TracerProvider, scope),
		wake:  make(chan struct{}, 1),
	}
	if s, ok := store.(broker.SizeLimiter); ok && s.MaxMessageBytes() > r.max {
		r.log.Warn("outbox: the store accepts messages its publisher refuses; rows in between will be parked, not published: "+
			"give the store the publisher's size limit", "store_max_bytes", s.MaxMessageBytes(), "publisher_max_bytes", r.max)
	}
	return r, nil
}

// maxMessageBytes is the size limit of pub (broker.SizeLimiter), or
// broker.DefaultMaxMessageBytes for a publisher that does not say.
func maxMessageBytes(pub broker.Publisher) int {
	if l, ok := pub.(broker.SizeLimiter); ok && l.MaxMessageBytes() > 0 {
		return l.MaxMessageBytes()
	}
	return broker.DefaultMaxMessageBytes
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
	// The pause after consecutive store or broker outages.
	outageBackoff := broker.Backoff{Initial: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: -1}
	failures := 0
	empty := 0 // claims in a row that found nothing, for adaptive polling
	for ctx.Err() == nil {
		res, err := r.cycle(ctx)
		var pause time.Duration
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			failures++
			pause = outageBackoff.Delay(failures)
			r.log.Error("outbox: store failed; retrying", "error", err, "retry_in", pause)
		case res.outage != nil:
			failures++
			pause = outageBackoff.Delay(failures)
			r.log.Warn("outbox: broker unavailable; rows stay pending", "error", res.outage,
				"rows", res.claimed, "retry_in", pause)
		default:
			failures = 0
			if res.claimed > 0 && !res.stalled {
				empty = 0
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
		if err == nil && res.outage == nil && !res.stalled && r.cfg.MinPollInterval > 0 {
			// Adaptive polling: soon after activity, then backing off.
			wait = adaptiveWait(r.cfg.MinPollInterval, wait, empty)
			empty++
		}
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
			empty = 0
			if r.cfg.WakeDelay > 0 && !sleep(ctx, r.cfg.WakeDelay) {
				return
			}
		case <-poll.C:
		}
	}
}

// adaptiveWait is the wait after n claims in a row found nothing: least
// doubled n times, at most most, without overflowing.
func adaptiveWait(least, most time.Duration, n int) time.Duration {
	d := least
	for range n {
		if d >= most/2 {
			return most
		}
		d *= 2
	}
	return min(d, most)
}

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
	// The pause after the notification channel broke.
	listenBackoff := broker.Backoff{Initial: time.Second, Max: 30 * time.Second, Jitter: -1}
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
		pause := listenBackoff.Delay(failures)
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
	if r.cfg.Retention > 0 && r.cfg.KeepPublished {
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
	out.Delete = !r.cfg.KeepPublished
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
