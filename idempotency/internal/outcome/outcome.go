// Package outcome records the outcomes of deduplication as OpenTelemetry
// metrics, span attributes and log lines. It is shared by the consumer and
// HTTP middleware and the Postgres transactional handler, so every path
// reports the same names. The logger and meter come from
// internal/telemetry, by the library's telemetry rule.
package outcome

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// scope is the instrumentation scope of the meter, below telemetry.Module.
const scope = "idempotency"

// Outcome names what happened to one delivery or request.
type Outcome string

// Outcomes. A delivery ends as exactly one of them.
const (
	Processed  Outcome = "processed"   // the key was free; the work ran and succeeded
	Duplicate  Outcome = "duplicate"   // the key was done; the work was skipped
	InProgress Outcome = "in_progress" // another holder had the key; retry later
	Failed     Outcome = "failed"      // the work ran and failed; the key was freed
	Error      Outcome = "error"       // no key, or the store failed; the work did not run
	Mismatch   Outcome = "mismatch"    // HTTP: the key was reused for a different request
	MissingKey Outcome = "missing_key" // HTTP: a required key was absent or malformed
)

var outcomes = []Outcome{Processed, Duplicate, InProgress, Failed, Error, Mismatch, MissingKey}

// Recorder records outcomes for one kind of caller ("consumer" or "http").
type Recorder struct {
	Log     *slog.Logger
	counter metric.Int64Counter
	attrs   map[Outcome]metric.AddOption
}

// New returns a Recorder. A nil logger means slog.Default(), a nil provider
// the OpenTelemetry global one.
func New(kind string, log *slog.Logger, mp metric.MeterProvider) *Recorder {
	log = telemetry.Logger(log)
	counter, err := telemetry.Meter(mp, scope).Int64Counter("steadfast.idempotency.outcomes",
		metric.WithDescription("Deliveries or requests that went through deduplication, by outcome."),
		metric.WithUnit("{item}"))
	if err != nil {
		// A provider that cannot build the instrument still returns a usable
		// one per the API contract; fall back to no-op to be safe.
		counter, _ = noop.NewMeterProvider().Meter(scope).Int64Counter("steadfast.idempotency.outcomes")
		log.Warn("idempotency: metrics disabled", "error", err)
	}
	r := &Recorder{Log: log, counter: counter, attrs: make(map[Outcome]metric.AddOption, len(outcomes))}
	for _, o := range outcomes {
		r.attrs[o] = metric.WithAttributeSet(attribute.NewSet(
			attribute.String("steadfast.idempotency.kind", kind),
			attribute.String("steadfast.idempotency.outcome", string(o))))
	}
	return r
}

// Record counts o and tags the current span with it.
func (r *Recorder) Record(ctx context.Context, o Outcome, scope, key string) {
	r.counter.Add(ctx, 1, r.attrs[o])
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(
			attribute.String("steadfast.idempotency.outcome", string(o)),
			attribute.String("steadfast.idempotency.scope", scope),
			attribute.String("steadfast.idempotency.key", key))
	}
}
