package saga_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
)

// recorder is a TracerProvider that gives every span real IDs and
// remembers its name and parent: enough to follow a trace without an SDK.
type recorder struct {
	noop.TracerProvider
	mu    sync.Mutex
	spans []recorded
}

type recorded struct {
	name   string
	sc     trace.SpanContext
	parent trace.SpanContext
}

func (r *recorder) Tracer(string, ...trace.TracerOption) trace.Tracer { return &tracer{r: r} }

type tracer struct {
	noop.Tracer
	r *recorder
}

type span struct {
	noop.Span
	sc trace.SpanContext
}

func (s span) SpanContext() trace.SpanContext { return s.sc }

func (t *tracer) Start(ctx context.Context, name string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	parent := trace.SpanContextFromContext(ctx)
	var cfg trace.SpanContextConfig
	if parent.IsValid() {
		cfg.TraceID = parent.TraceID()
	} else {
		_, _ = rand.Read(cfg.TraceID[:])
	}
	_, _ = rand.Read(cfg.SpanID[:])
	cfg.TraceFlags = trace.FlagsSampled
	sc := trace.NewSpanContext(cfg)
	t.r.mu.Lock()
	t.r.spans = append(t.r.spans, recorded{name, sc, parent})
	t.r.mu.Unlock()
	s := span{sc: sc}
	return trace.ContextWithSpan(ctx, s), s
}

func (r *recorder) byName(name string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, s := range r.spans {
		if s.name == name {
			out = append(out, s)
		}
	}
	return out
}

// TestTraceFollowsTheSaga: one trace from Start through every command,
// participant and reply, compensation included: each participant span is
// the child of the step span whose command it handles, and each reply span
// the child of the participant span that answered.
func TestTraceFollowsTheSaga(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec := &recorder{}
	b := memory.New(memory.Config{})
	defer b.Close()
	store, _ := sagamem.New(sagamem.Config{Publisher: b})
	defer store.Close()
	parts, _ := sagamem.NewParticipants(sagamem.Config{Publisher: b})
	defer parts.Close()
	def, err := saga.Define("order", 1,
		saga.Step[Order]{Name: "reserve", Command: command("inventory"), CompensationCommand: command("inventory")},
		saga.Step[Order]{Name: "charge", Kind: saga.Pivot, Command: command("payment")})
	if err != nil {
		t.Fatal(err)
	}
	eng, _ := saga.NewEngine(store, saga.Config{Subscriber: b, TracerProvider: rec})
	_ = eng.Register(def)
	go func() { _ = eng.Run(ctx) }()
	for _, name := range []string{"inventory", "payment"} {
		p, _ := saga.NewParticipant(parts, saga.ParticipantConfig{Name: name, TracerProvider: rec,
			Action: func(_ context.Context, _ saga.Tx, c saga.Command) ([]byte, error) {
				if c.Step == "charge" {
					return nil, saga.Refusef("declined")
				}
				return nil, nil
			}})
		go func() { _ = b.Subscribe(ctx, broker.Subscription{Topic: name, Group: name}, p.Handle) }()
	}
	if _, err := saga.Start(ctx, eng, def, "o-1", Order{ID: "o-1"}); err != nil {
		t.Fatal(err)
	}
	for in, _ := store.Get(ctx, "o-1"); !in.Status.Finished(); in, _ = store.Get(ctx, "o-1") {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // the last reply span ends after the commit
	start := rec.byName("saga.start order")
	if len(start) != 1 {
		t.Fatalf("start spans: %d", len(start))
	}
	traceID := start[0].sc.TraceID()
	for _, name := range []string{"saga.step reserve", "saga.step charge", "saga.compensate reserve",
		"saga.participant reserve", "saga.participant charge", "saga.reply reserve", "saga.reply charge"} {
		spans := rec.byName(name)
		if len(spans) == 0 {
			t.Errorf("no span %q", name)
			continue
		}
		for _, s := range spans {
			if s.sc.TraceID() != traceID {
				t.Errorf("span %q in trace %s, want %s", name, s.sc.TraceID(), traceID)
			}
		}
	}
	// Parentage across the broker: step -> participant -> reply.
	steps := map[trace.SpanID]string{}
	for _, n := range []string{"saga.step reserve", "saga.step charge", "saga.compensate reserve"} {
		for _, s := range rec.byName(n) {
			steps[s.sc.SpanID()] = n
		}
	}
	participants := map[trace.SpanID]bool{}
	for _, n := range []string{"saga.participant reserve", "saga.participant charge"} {
		for _, s := range rec.byName(n) {
			if steps[s.parent.SpanID()] == "" {
				t.Errorf("%s is not the child of a step span", n)
			}
			participants[s.sc.SpanID()] = true
		}
	}
	for _, n := range []string{"saga.reply reserve", "saga.reply charge"} {
		for _, s := range rec.byName(n) {
			if !participants[s.parent.SpanID()] {
				t.Errorf("%s is not the child of a participant span", n)
			}
		}
	}
}

// TestTraceContinuesProcessSpans: when the broker starts a "process
// <topic>" span for a delivery, the participant's and the engine's spans
// are its children (not its siblings under the sender's span), so the
// trace reads broker hop by broker hop: step -> process -> participant ->
// process -> reply.
func TestTraceContinuesProcessSpans(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec := telemetrytest.New(t)
	b := memory.New(memory.Config{TracerProvider: rec.Provider})
	defer b.Close()
	store, _ := sagamem.New(sagamem.Config{Publisher: b})
	defer store.Close()
	parts, _ := sagamem.NewParticipants(sagamem.Config{Publisher: b})
	defer parts.Close()
	def, err := saga.Define("order", 1, saga.Step[Order]{Name: "reserve", Command: command("inventory")})
	if err != nil {
		t.Fatal(err)
	}
	eng, _ := saga.NewEngine(store, saga.Config{Subscriber: b, TracerProvider: rec.Provider})
	_ = eng.Register(def)
	go func() { _ = eng.Run(ctx) }()
	p, _ := saga.NewParticipant(parts, saga.ParticipantConfig{Name: "inventory", TracerProvider: rec.Provider,
		Action: func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil }})
	go func() { _ = b.Subscribe(ctx, broker.Subscription{Topic: "inventory", Group: "inventory"}, p.Handle) }()
	if _, err := saga.Start(ctx, eng, def, "o-1", Order{ID: "o-1"}); err != nil {
		t.Fatal(err)
	}
	reply := rec.Span(t, "saga.reply reserve", trace.SpanKindConsumer, 30*time.Second)
	byID := map[trace.SpanID]string{}
	parent := map[trace.SpanID]trace.SpanID{}
	for _, s := range rec.Ended() {
		byID[s.SpanContext().SpanID()] = s.Name()
		parent[s.SpanContext().SpanID()] = s.Parent().SpanID()
	}
	var chain []string
	for id := reply.SpanContext().SpanID(); id.IsValid() && byID[id] != ""; id = parent[id] {
		chain = append(chain, byID[id])
	}
	want := []string{"saga.reply reserve", "process saga.replies", "saga.participant reserve", "process inventory", "saga.step reserve", "saga.start order"}
	if fmt.Sprint(chain) != fmt.Sprint(want) {
		t.Errorf("ancestors of the reply span: %q\nwant %q", chain, want)
	}
}
