package outbox

import (
	"cmp"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Defaults for Config fields left zero.
const (
	DefaultBatchSize       = 1000
	DefaultPollInterval    = time.Second
	DefaultMinPollInterval = time.Millisecond
	DefaultMaxAttempts     = 10
	DefaultPublishTimeout  = 20 * time.Second
	DefaultRetention       = time.Hour
	DefaultCleanupInterval = time.Minute
	DefaultCleanupBatch    = 1000
	DefaultStatsInterval   = 10 * time.Second
)

// DefaultBackoff returns the schedule Config.Backoff uses when zero: 1s
// after the first failed attempt, doubling, at most 5m, each wait shortened
// by up to 20% at random so that rows that failed together do not retry
// together.
func DefaultBackoff() broker.Backoff {
	return broker.Backoff{Initial: time.Second, Max: 5 * time.Minute, Jitter: 0.2}
}

// Config tunes a Relay. The zero value is ready to use. Zero fields take
// their documented defaults; a negative value turns a setting off where its
// field says so, and is rejected elsewhere.
type Config struct {
	// Name labels the relay's metrics and logs (attribute outbox.name).
	// Default "outbox".
	Name string
	// BatchSize is the most rows claimed and published per Publish call.
	// Default DefaultBatchSize (1000). Larger batches raise throughput and
	// the number of duplicates a crash can cause (at most one batch per
	// relay). Each claim costs a few round trips to the store and one
	// Publish call whatever its size, so a batch of 1000 spends half as
	// much per row on them as one of 500; beyond 1000 the gain is small
	// while a crash's duplicates and the rows a claim holds grow.
	BatchSize int
	// PollInterval is how often an idle relay looks for rows when nothing
	// wakes it: the fallback when notifications are lost or the store has
	// none, and the pace of retries. Default DefaultPollInterval (1s).
	PollInterval time.Duration
	// MinPollInterval makes polling adaptive: after a claim that found
	// nothing, the relay looks again after MinPollInterval, then after
	// twice as long each time it finds nothing, up to PollInterval; a claim
	// that finds rows, or a wake-up, starts over. A relay that was just busy
	// (or just woken) thus finds rows committed shortly after within
	// milliseconds, which is what keeps latency low when wake-ups come before
	// the rows are visible (the postgres store's default, see its
	// Config.NotifyInTransaction), while an idle relay costs one query per
	// PollInterval. Default DefaultMinPollInterval (1ms); negative turns
	// adaptive polling off (every wait is PollInterval).
	MinPollInterval time.Duration
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
	// Backoff is how long a row waits after a failure, by its number of
	// failed attempts. It is a pure function of that count, which lives in
	// the row and survives relay restarts. Zero means DefaultBackoff();
	// otherwise zero fields take broker.Backoff's defaults.
	Backoff broker.Backoff
	// BlockKeyOnPark keeps a key blocked while it has a parked row: nothing
	// after the parked row is published until the row is redriven (then it
	// goes first) or deleted. Per-key order then holds without exception,
	// at the price of a stalled key. When false (the default) the parked row
	// is set aside and the rest of its key flows on; redriving it later
	// publishes it after rows that were enqueued after it.
	BlockKeyOnPark bool
	// Permanent reports whether a publish error means the message can never
	// be published, so its row is parked at once instead of retried.
	// broker.ErrEmptyTopic, broker.ErrMessageTooLarge and
	// broker.ErrInvalidMessage always are; this
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
	// KeepPublished marks rows published once the broker accepted them,
	// and keeps them for Retention, instead of deleting them (the default).
	// The guarantees are the same either way: a row is deleted or marked in
	// the transaction that claimed it, after the broker acknowledged it.
	// Keeping costs throughput: on PostgreSQL marking a row writes a new
	// version of it (payload included) and an index entry, several times
	// the work of a delete: measured draining 1 KB rows to Kafka, keeping
	// halved the relay's throughput (and a hand-written relay's as well);
	// housekeeping then deletes the rows anyway. Keep them for
	// an audit trail or to inspect what was sent.
	KeepPublished bool
	// DeletePublished deletes rows once the broker accepted them, which is
	// the default.
	//
	// Deprecated: published rows are deleted unless KeepPublished is set;
	// this field is ignored.
	DeletePublished bool
	// Retention is how long rows kept by KeepPublished stay before
	// housekeeping deletes them, in batches of CleanupBatch every
	// CleanupInterval. Default DefaultRetention (1h); negative keeps them
	// forever.
	Retention       time.Duration
	CleanupInterval time.Duration // default DefaultCleanupInterval (1m)
	CleanupBatch    int           // default DefaultCleanupBatch (1000)
	// StatsInterval is how often the backlog gauges (pending rows, oldest
	// pending age, parked rows) are refreshed from the store. On PostgreSQL
	// one refresh is one count of the pending rows through their index,
	// once per interval whatever the traffic: the drain benchmarks run
	// with the default. Default DefaultStatsInterval (10s); negative
	// disables them.
	StatsInterval time.Duration
	// Logger receives the relay's logs: broker outages, retries, parked
	// rows. Default slog.Default(); pass a logger with a discarding handler
	// to silence it.
	Logger *slog.Logger
	// MeterProvider provides the relay's metrics. Default: the
	// OpenTelemetry global provider, which records nothing until the
	// application installs an SDK.
	MeterProvider metric.MeterProvider
	// TracerProvider traces each batch publish ("outbox publish", around
	// the publisher's own spans) and each message's publish ("publish
	// <topic>", in the trace of the request that enqueued it: see
	// Relay). Default: the OpenTelemetry global provider.
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
	}
	if err := c.Backoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: Backoff: %w", ErrInvalidConfig, err)
	}
	c.Name = cmp.Or(c.Name, "outbox")
	c.BatchSize = cmp.Or(c.BatchSize, DefaultBatchSize)
	c.PollInterval = cmp.Or(c.PollInterval, DefaultPollInterval)
	c.MinPollInterval = cmp.Or(c.MinPollInterval, DefaultMinPollInterval)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, DefaultMaxAttempts)
	c.Backoff = cmp.Or(c.Backoff, DefaultBackoff())
	c.PublishTimeout = cmp.Or(c.PublishTimeout, DefaultPublishTimeout)
	c.Retention = cmp.Or(c.Retention, DefaultRetention)
	c.CleanupInterval = cmp.Or(c.CleanupInterval, DefaultCleanupInterval)
	c.CleanupBatch = cmp.Or(c.CleanupBatch, DefaultCleanupBatch)
	c.StatsInterval = cmp.Or(c.StatsInterval, DefaultStatsInterval)
	c.Logger = telemetry.Logger(c.Logger)
	return c, nil
}
