package saga

import (
	"context"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// HeaderSource names the service that emitted a choreographed event; the
// flow tracker draws it as a participant of the flow's sequence diagram.
const HeaderSource = broker.ReservedHeaderPrefix + "source"

// Choreography derives the events of a choreographed flow, where services
// react to each other's events with no orchestrator: every event carries
// the flow's correlation-id, names the event it reacts to in causation-id,
// and continues its trace, so that a Tracker (and a tracing backend) can
// put the flow back together.
type Choreography struct {
	// Service names the emitting service (HeaderSource).
	Service string
}

// Begin returns the first event of a new flow: its correlation-id is its
// own ID, its key the correlation-id (so the flow's events keep their order
// per topic), its type eventType, and it carries the trace context of ctx.
func (c Choreography) Begin(ctx context.Context, topic, eventType string, payload []byte) broker.Message {
	m := broker.NewMessage(topic, payload)
	m.Key = m.ID
	h := map[string]string{broker.HeaderCorrelationID: m.ID, broker.HeaderType: eventType}
	if c.Service != "" {
		h[HeaderSource] = c.Service
	}
	m.Headers = telemetry.Inject(ctx, h)
	return m
}

// Next returns an event reacting to in: same correlation-id (in's, or in's
// ID when it has none), causation-id set to in's ID, key the correlation-id,
// type eventType, and the trace continued: the span of ctx when it has one
// (a handler's span), else in's own trace context.
func (c Choreography) Next(ctx context.Context, in broker.Message, topic, eventType string, payload []byte) broker.Message {
	m := broker.NewMessage(topic, payload)
	corr := in.Headers[broker.HeaderCorrelationID]
	if corr == "" {
		corr = in.ID
	}
	m.Key = corr
	h := map[string]string{broker.HeaderCorrelationID: corr, broker.HeaderCausationID: in.ID, broker.HeaderType: eventType}
	if c.Service != "" {
		h[HeaderSource] = c.Service
	}
	h = telemetry.Inject(ctx, h)
	if h[broker.HeaderTraceparent] == "" && in.Headers[broker.HeaderTraceparent] != "" {
		h[broker.HeaderTraceparent] = in.Headers[broker.HeaderTraceparent]
		if ts := in.Headers[broker.HeaderTracestate]; ts != "" {
			h[broker.HeaderTracestate] = ts
		}
	}
	m.Headers = h
	return m
}
