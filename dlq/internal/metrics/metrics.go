// Package metrics holds the OpenTelemetry instruments shared by the dlq
// packages. The meter comes from internal/telemetry, by the library's
// telemetry rule.
package metrics

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// scope is the instrumentation scope of every dlq instrument, below
// telemetry.Module.
const scope = "dlq"

// Metric names.
const (
	DeadLettered   = "steadfast.dlq.dead_lettered"
	Retried        = "steadfast.dlq.retried"
	PublishFailed  = "steadfast.dlq.dead_letter_failures"
	Replayed       = "steadfast.dlq.replayed"
	Purged         = "steadfast.dlq.purged"
	attrTopic      = "messaging.destination.name"
	attrGroup      = "messaging.consumer.group.name"
	attrClass      = "error.class"
	attrReason     = "dlq.reason"
	attrRetry      = "dlq.retry"
	attrDeadLetter = "dlq.destination"
)

// Instruments are the dlq counters. Methods are safe on a zero value
// (nothing is recorded).
type Instruments struct {
	deadLettered, retried, publishFailed, replayed, purged metric.Int64Counter
}

// New creates the instruments on mp, or on the global provider when mp is
// nil.
func New(mp metric.MeterProvider) (*Instruments, error) {
	m := telemetry.Meter(mp, scope)
	var in Instruments
	var err error
	counters := []struct {
		dst         *metric.Int64Counter
		name, descr string
	}{
		{&in.deadLettered, DeadLettered, "Messages sent to a dead-letter destination."},
		{&in.retried, Retried, "Failed attempts followed by a retry."},
		{&in.publishFailed, PublishFailed, "Dead-letter or retry publishes that failed; the message stays unacknowledged and is redelivered."},
		{&in.replayed, Replayed, "Dead letters replayed to their original topic."},
		{&in.purged, Purged, "Dead letters purged."},
	}
	for _, c := range counters {
		if *c.dst, err = m.Int64Counter(c.name, metric.WithDescription(c.descr), metric.WithUnit("{message}")); err != nil {
			return nil, err
		}
	}
	return &in, nil
}

// DeadLetter counts one message dead-lettered from topic by group.
func (in *Instruments) DeadLetter(ctx context.Context, topic, group, class, reason string) {
	if in == nil || in.deadLettered == nil {
		return
	}
	in.deadLettered.Add(ctx, 1, metric.WithAttributes(
		attribute.String(attrTopic, topic), attribute.String(attrGroup, group),
		attribute.String(attrClass, class), attribute.String(attrReason, reason)))
}

// Retry counts one failed attempt that will be retried in the given way.
func (in *Instruments) Retry(ctx context.Context, topic, group, how string) {
	if in == nil || in.retried == nil {
		return
	}
	in.retried.Add(ctx, 1, metric.WithAttributes(
		attribute.String(attrTopic, topic), attribute.String(attrGroup, group), attribute.String(attrRetry, how)))
}

// PublishFailure counts one failed dead-letter or retry publish.
func (in *Instruments) PublishFailure(ctx context.Context, topic, group string) {
	if in == nil || in.publishFailed == nil {
		return
	}
	in.publishFailed.Add(ctx, 1, metric.WithAttributes(
		attribute.String(attrTopic, topic), attribute.String(attrGroup, group)))
}

// Replay counts n dead letters replayed from the dead-letter destination dl.
func (in *Instruments) Replay(ctx context.Context, dl string, n int) {
	if in == nil || in.replayed == nil || n == 0 {
		return
	}
	in.replayed.Add(ctx, int64(n), metric.WithAttributes(attribute.String(attrDeadLetter, dl)))
}

// Purge counts n dead letters purged from the dead-letter destination dl.
func (in *Instruments) Purge(ctx context.Context, dl string, n int) {
	if in == nil || in.purged == nil || n == 0 {
		return
	}
	in.purged.Add(ctx, int64(n), metric.WithAttributes(attribute.String(attrDeadLetter, dl)))
}
