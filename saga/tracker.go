package saga

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// FlowSpec describes one type of choreographed flow to a Tracker.
type FlowSpec struct {
	// Name is the flow type. Required, unique.
	Name string
	// Events lists the event types (broker.HeaderType) that belong to the
	// flow; an event's type decides its flow. Required; an event type
	// belongs to one flow only. Terminal types need not be repeated here.
	Events []string
	// Terminal lists the event types that end the flow (success or
	// failure alike). Required.
	Terminal []string
	// Deadline is how long a flow may take from its first event to a
	// terminal one before Stuck reports it. Zero or negative: never.
	Deadline time.Duration
}

// FlowEvent is one event of a flow as the tracker records it.
type FlowEvent struct {
	CorrelationID string
	MessageID     string
	CausationID   string
	// Flow is the flow type.
	Flow string
	// Type, Source and Topic: the event type, the emitting service
	// (HeaderSource, "" when unknown) and the topic it was consumed from.
	Type, Source, Topic string
	// At is the event's message time.
	At time.Time
	// Terminal: the event ends its flow.
	Terminal bool
	// Deadline is the flow's deadline, used when this event creates the
	// flow's record.
	Deadline time.Duration
	// Seq orders events recorded for one flow (assigned by the store).
	Seq int64
}

// FlowSummary is the state of one tracked flow.
type FlowSummary struct {
	CorrelationID string
	Flow          string
	// StartedAt is the earliest event time seen, LastAt the latest.
	StartedAt, LastAt time.Time
	// LastType and LastSource are the event with the latest time: where
	// the flow stands (or stopped).
	LastType, LastSource string
	Events               int
	// Done is true once a terminal event arrived; EndedAt is its time.
	Done    bool
	EndedAt time.Time
	// DueAt is StartedAt + the flow's deadline (zero: none).
	DueAt time.Time
}

// FlowQuery selects flows for FlowStore.Flows.
type FlowQuery struct {
	// Flow, when not empty, keeps flows of this type.
	Flow string
	// Done, when not nil, keeps finished (true) or unfinished (false)
	// flows.
	Done *bool
	// AfterID pages by correlation ID; Limit caps (0: 100).
	AfterID string
	Limit   int
}

// FlowStore is the storage port of the flow tracker. saga/postgres keeps
// flows and their events in two tables; saga/memory in process.
type FlowStore interface {
	// Record stores events, ignoring those whose MessageID is already
	// recorded (redeliveries), and creates or updates their flows'
	// summaries. It returns how many it stored.
	Record(ctx context.Context, evs []FlowEvent) (int, error)
	// Flow returns a flow's summary and its events ordered by time, then
	// by Seq. It fails with ErrNotFound.
	Flow(ctx context.Context, correlationID string) (FlowSummary, []FlowEvent, error)
	// Stuck returns up to limit unfinished flows whose DueAt is before now,
	// most overdue first.
	Stuck(ctx context.Context, now time.Time, limit int) ([]FlowSummary, error)
	// Flows lists flows in correlation ID order.
	Flows(ctx context.Context, q FlowQuery) ([]FlowSummary, error)
}

// TrackerConfig configures a Tracker.
type TrackerConfig struct {
	// Flows are the flow types to track. Required.
	Flows []FlowSpec
	// Logger receives the events it cannot track. Default slog.Default().
	Logger *slog.Logger
}

// Tracker follows choreographed flows: it consumes their events (Handle,
// subscribed to every topic of the flows in a group of its own), keeps a
// per-correlation-id timeline in its FlowStore, knows each flow's
// terminal events, and reports flows that did not reach one within their
// deadline: where they stopped and since when.
//
// Events without a correlation-id or type, or of a type no flow lists, are
// not tracked (logged at debug level and acknowledged): the tracker
// observes, it never blocks a topic. Redelivered events are recorded once.
type Tracker struct {
	store  FlowStore
	log    *slog.Logger
	byType map[string]*FlowSpec
	specs  map[string]*FlowSpec
}

// NewTracker returns a tracker of cfg.Flows on store.
func NewTracker(store FlowStore, cfg TrackerConfig) (*Tracker, error) {
	if store == nil {
		return nil, fmt.Errorf("%w: nil flow store", ErrInvalidConfig)
	}
	if len(cfg.Flows) == 0 {
		return nil, fmt.Errorf("%w: no flows to track", ErrInvalidConfig)
	}
	t := &Tracker{store: store, log: telemetry.Logger(cfg.Logger),
		byType: map[string]*FlowSpec{}, specs: map[string]*FlowSpec{}}
	for i := range cfg.Flows {
		f := cfg.Flows[i]
		if err := checkName("flow name", f.Name); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		if t.specs[f.Name] != nil {
			return nil, fmt.Errorf("%w: flow %q listed twice", ErrInvalidConfig, f.Name)
		}
		if len(f.Terminal) == 0 {
			return nil, fmt.Errorf("%w: flow %q has no terminal event", ErrInvalidConfig, f.Name)
		}
		t.specs[f.Name] = &f
		for _, typ := range append(slices.Clone(f.Events), f.Terminal...) {
			if typ == "" {
				return nil, fmt.Errorf("%w: flow %q lists an empty event type", ErrInvalidConfig, f.Name)
			}
			if other := t.byType[typ]; other != nil && other != &f {
				return nil, fmt.Errorf("%w: event type %q is in flows %q and %q", ErrInvalidConfig, typ, other.Name, f.Name)
			}
			t.byType[typ] = &f
		}
	}
	return t, nil
}

// Handle records one delivered event. It is a broker.Handler.
func (t *Tracker) Handle(ctx context.Context, d broker.Delivery) error {
	return t.Record(ctx, d.Message)
}

// Record records events (untracked ones are skipped), in one store call.
func (t *Tracker) Record(ctx context.Context, msgs ...broker.Message) error {
	evs := make([]FlowEvent, 0, len(msgs))
	for _, m := range msgs {
		ev, ok := t.event(m)
		if !ok {
			t.log.DebugContext(ctx, "saga: event not tracked", "message_id", m.ID, "topic", m.Topic, "type", m.Headers[broker.HeaderType])
			continue
		}
		evs = append(evs, ev)
	}
	if len(evs) == 0 {
		return nil
	}
	if _, err := t.store.Record(ctx, evs); err != nil {
		return fmt.Errorf("saga: track %d events: %w", len(evs), err)
	}
	return nil
}

func (t *Tracker) event(m broker.Message) (FlowEvent, bool) {
	typ, corr := m.Headers[broker.HeaderType], m.Headers[broker.HeaderCorrelationID]
	spec := t.byType[typ]
	if spec == nil || corr == "" || m.ID == "" || checkName("correlation ID", corr) != nil {
		return FlowEvent{}, false
	}
	at := m.Time
	if at.IsZero() {
		at = time.Now()
	}
	return FlowEvent{CorrelationID: corr, MessageID: m.ID, CausationID: cut(m.Headers[broker.HeaderCausationID], 200),
		Flow: spec.Name, Type: typ, Source: cut(m.Headers[HeaderSource], 200), Topic: m.Topic, At: at,
		Terminal: slices.Contains(spec.Terminal, typ), Deadline: max(spec.Deadline, 0)}, true
}

// Flow returns the timeline of one flow.
func (t *Tracker) Flow(ctx context.Context, correlationID string) (FlowTimeline, error) {
	return LoadFlow(ctx, t.store, correlationID)
}

// Stuck returns up to limit (0: 100) unfinished flows past their
// deadline, most overdue first.
func (t *Tracker) Stuck(ctx context.Context, limit int) ([]FlowSummary, error) {
	if limit <= 0 {
		limit = 100
	}
	return t.store.Stuck(ctx, time.Now(), limit)
}

// FlowTimeline is one flow with its events.
type FlowTimeline struct {
	Flow   FlowSummary
	Events []FlowEvent
}

// LoadFlow reads a flow's timeline from store.
func LoadFlow(ctx context.Context, store FlowStore, correlationID string) (FlowTimeline, error) {
	f, evs, err := store.Flow(ctx, correlationID)
	if err != nil {
		return FlowTimeline{}, err
	}
	return FlowTimeline{Flow: f, Events: evs}, nil
}

// Mermaid returns a Mermaid sequence diagram of the flow as it happened:
// each event is an arrow from the service that emitted it to each service
// that reacted to it (emitted an event naming it as cause), or to itself
// when none did; a flow that is not done ends with a note saying where and
// since when it stopped.
func (ft FlowTimeline) Mermaid() string {
	var b strings.Builder
	b.WriteString("sequenceDiagram\n")
	fmt.Fprintf(&b, "    title %s %s\n", mermaidText(ft.Flow.Flow), mermaidText(ft.Flow.CorrelationID))
	names := map[string]string{}
	actor := func(src string) string {
		if src == "" {
			src = "unknown"
		}
		if n, ok := names[src]; ok {
			return n
		}
		n := fmt.Sprintf("p%d", len(names))
		names[src] = n
		fmt.Fprintf(&b, "    participant %s as %s\n", n, mermaidText(src))
		return n
	}
	for _, ev := range ft.Events {
		actor(ev.Source)
	}
	reactions := map[string][]FlowEvent{}
	for _, ev := range ft.Events {
		if ev.CausationID != "" {
			reactions[ev.CausationID] = append(reactions[ev.CausationID], ev)
		}
	}
	start := ft.Flow.StartedAt
	for _, ev := range ft.Events {
		from := actor(ev.Source)
		label := fmt.Sprintf("%s (+%s)", mermaidText(ev.Type), ev.At.Sub(start).Round(time.Millisecond))
		rs := reactions[ev.MessageID]
		if len(rs) == 0 {
			fmt.Fprintf(&b, "    %s->>%s: %s\n", from, from, label)
		}
		seen := map[string]bool{}
		for _, r := range rs {
			to := actor(r.Source)
			if seen[to] {
				continue
			}
			seen[to] = true
			fmt.Fprintf(&b, "    %s->>%s: %s\n", from, to, label)
		}
		if ev.Terminal {
			fmt.Fprintf(&b, "    Note over %s: %s ends the flow\n", from, mermaidText(ev.Type))
		}
	}
	if !ft.Flow.Done && len(ft.Events) > 0 {
		last := ft.Events[len(ft.Events)-1]
		fmt.Fprintf(&b, "    Note over %s: stopped after %s since %s\n", actor(last.Source), mermaidText(last.Type),
			ft.Flow.LastAt.UTC().Format(time.RFC3339))
	}
	return b.String()
}
