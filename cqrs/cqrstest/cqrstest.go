// Package cqrstest is the conformance suite of cqrs read-model stores
// (cqrs.Store): every backend (cqrs/postgres, cqrs/redis, cqrs/memory) runs
// it with Run and a factory of its Backend.
//
// The suite projects a small scoring domain (ScoreAdded events into a score
// per player, and a side effect per live event) through cqrs.Projector and
// asserts exact results: a crash at each of the projector's fault points,
// two instances of one projection, the checked checkpoint write and the
// lease, each poison policy, unregistered event types, a blue/green rebuild
// under a query loop with side effects done once, and read-your-writes.
package cqrstest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
)

// ScoreAdded is the suite's event: Points to Player. Negative points make
// the suite's handler fail (a poison event); points equal to Flaky make it
// fail on the first attempts (FlakyFailures of them).
type ScoreAdded struct {
	Player string `json:"player"`
	Points int64  `json:"points"`
}

// Flaky is the Points value the handler fails on FlakyFailures times.
const Flaky = 7_777_777

// TypeScoreAdded is ScoreAdded's registered name.
const TypeScoreAdded = "score.added"

// Registry returns a registry with ScoreAdded.
func Registry() *eventsource.Registry {
	reg := eventsource.NewRegistry()
	eventsource.Register[ScoreAdded](reg, TypeScoreAdded, 1)
	return reg
}

// Events is the event store a case appends to and projects from.
type Events interface {
	eventsource.Appender
	eventsource.LogReader
}

// Model is a version's read model as the suite sees it.
type Model struct {
	// Scores maps players to their points.
	Scores map[string]int64
	// Events is the number of events counted into the model.
	Events int64
}

// Writer writes one batch's changes to a version's read model, through
// the backend's transaction.
type Writer interface {
	// AddScores adds points per player and n to the event count.
	AddScores(ctx context.Context, points map[string]int64, n int64) error
	// Effect records the side effects of the events with these IDs (the
	// suite calls it for live events only).
	Effect(ctx context.Context, eventIDs []string) error
}

// Backend is one case's store and the ways to read it.
type Backend[T any] struct {
	// Store is a fresh store (its own tables or key prefix).
	Store cqrs.Store[T]
	// Events is a fresh event store.
	Events Events
	// Writer returns the writer of batch b's changes through tx.
	Writer func(tx T, b *cqrs.Batch) Writer
	// Prepare creates version id's read model (tables), empty. Optional.
	Prepare func(ctx context.Context, id cqrs.ID) error
	// Read returns version id's read model.
	Read func(ctx context.Context, id cqrs.ID) (Model, error)
	// ReadActive returns the serving version's read model of name as a
	// query would see it: one read, atomic with respect to swaps.
	ReadActive func(ctx context.Context, name string) (Model, error)
	// Effects returns the IDs of the events whose side effects were
	// recorded for name (by any version), with repetitions.
	Effects func(ctx context.Context, name string) ([]string, error)
	// Views returns the read model's tables of projection name (for
	// Projection.Views).
	Views func(name string) []string
	// Kill, when set, ends the lease of the instance holding id the way
	// its process dying would (postgres: its session is terminated), for
	// the takeover case; else the holder is stopped by cancelling it.
	Kill func(t *testing.T, id cqrs.ID)
}

// Features declares what the backend offers, and tunes the suite.
type Features struct {
	// Timeout bounds every wait. Default 60s.
	Timeout time.Duration
	// Events is the number of events the larger cases project. Default
	// 2,000.
	Events int
	// CrashPoints are the store's own fault points (internal/fault) the
	// crash case stops at too, besides the projector's: e.g. between the
	// checkpoint write and the commit.
	CrashPoints []string
	// Logger receives the projectors' logs. Default: discarded.
	Logger *slog.Logger
}

func (f Features) withDefaults() Features {
	if f.Timeout <= 0 {
		f.Timeout = 60 * time.Second
	}
	if f.Logger == nil {
		f.Logger = slog.New(slog.DiscardHandler)
	}
	if f.Events <= 0 {
		f.Events = 2000
	}
	return f
}

// Run runs every case as a parallel subtest, each with a Backend of its
// own from newBackend.
func Run[T any](t *testing.T, f Features, newBackend func(t *testing.T) Backend[T]) {
	f = f.withDefaults()
	for _, c := range cases[T]() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := &harness[T]{t: t, f: f, b: newBackend(t)}
			c.run(h)
		})
	}
}

type testCase[T any] struct {
	name string
	run  func(h *harness[T])
}

func cases[T any]() []testCase[T] {
	return []testCase[T]{
		{"Project", project[T]},
		{"CrashPoints", crashPoints[T]},
		{"TwoInstances", twoInstances[T]},
		{"CheckedWrite", checkedWrite[T]},
		{"PoisonStop", poisonStop[T]},
		{"PoisonSkip", poisonSkip[T]},
		{"PoisonRetry", poisonRetry[T]},
		{"Unregistered", unregistered[T]},
		{"BlueGreen", blueGreen[T]},
		{"ReadYourWrites", readYourWrites[T]},
		{"ConsumerProject", consumerProject[T]},
		{"ConsumerCrashPoints", consumerCrashPoints[T]},
		{"ConsumerConcurrent", consumerConcurrent[T]},
		{"ConsumerPoison", consumerPoison[T]},
	}
}

type harness[T any] struct {
	t      *testing.T
	f      Features
	b      Backend[T]
	expect Model
	before Model
	last   eventsource.Position
	n      int
}

func (h *harness[T]) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.f.Timeout)
	h.t.Cleanup(cancel)
	return ctx
}

// append appends n events (round robin over players p0..p9, points i%5+1)
// in transactions of up to 100, and updates the expected model.
func (h *harness[T]) append(n int) eventsource.Position {
	h.t.Helper()
	if h.expect.Scores == nil {
		h.expect.Scores = map[string]int64{}
	}
	ctx := h.ctx()
	reg := Registry()
	for done := 0; done < n; {
		k := min(100, n-done)
		var apps []eventsource.StreamAppend
		for i := range k {
			e := ScoreAdded{Player: fmt.Sprintf("p%d", (h.n+i)%10), Points: int64((h.n+i)%5 + 1)}
			d, err := reg.Encode(ctx, e)
			if err != nil {
				h.t.Fatal(err)
			}
			apps = append(apps, eventsource.StreamAppend{StreamID: fmt.Sprintf("game-%d", h.n+i), Expected: eventsource.NoStream,
				Events: []eventsource.EventData{d}})
			h.expect.Scores[e.Player] += e.Points
			h.expect.Events++
		}
		res, err := h.b.Events.Append(ctx, apps...)
		if err != nil {
			h.t.Fatal(err)
		}
		h.last = eventsource.LastPosition(res)
		h.n += k
		done += k
	}
	return h.last
}

// appendOne appends one event with raw type and data.
func (h *harness[T]) appendRaw(typ string, data []byte) eventsource.Position {
	h.t.Helper()
	res, err := h.b.Events.Append(h.ctx(), eventsource.StreamAppend{StreamID: fmt.Sprintf("game-%d", h.n), Expected: eventsource.NoStream,
		Events: []eventsource.EventData{{Type: typ, SchemaVersion: 1, Data: data}}})
	if err != nil {
		h.t.Fatal(err)
	}
	h.n++
	h.last = eventsource.LastPosition(res)
	return h.last
}

func (h *harness[T]) appendScore(e ScoreAdded, count bool) eventsource.Position {
	h.t.Helper()
	d, err := Registry().Encode(h.ctx(), e)
	if err != nil {
		h.t.Fatal(err)
	}
	pos := h.appendRaw(d.Type, d.Data)
	if count {
		if h.expect.Scores == nil {
			h.expect.Scores = map[string]int64{}
		}
		h.expect.Scores[e.Player] += e.Points
		h.expect.Events++
	}
	return pos
}

// projection returns the suite's projection of name and version.
type counters struct {
	flaky   int
	flakyOK int
}

func (h *harness[T]) projection(name string, version int, pol cqrs.Policy, c *counters) cqrs.Projection[T] {
	if h.b.Prepare != nil {
		if err := h.b.Prepare(h.ctx(), cqrs.ID{Name: name, Version: version}); err != nil {
			h.t.Fatal(err)
		}
	}
	var views []string
	if h.b.Views != nil {
		views = h.b.Views(name)
	}
	return cqrs.Projection[T]{ID: cqrs.ID{Name: name, Version: version}, Views: views, Poison: pol,
		MaxAttempts: 3, Backoff: fastBackoff(),
		Handle: func(ctx context.Context, tx T, b *cqrs.Batch) error {
			points := map[string]int64{}
			var live []string
			for _, e := range b.Events {
				s, ok := e.Event.(ScoreAdded)
				if !ok {
					return fmt.Errorf("cqrstest: unexpected event %T", e.Event)
				}
				if s.Points < 0 {
					return fmt.Errorf("cqrstest: negative points for %s", s.Player)
				}
				if s.Points == Flaky && c != nil && c.flaky < c.flakyOK {
					c.flaky++
					return fmt.Errorf("cqrstest: flaky failure %d", c.flaky)
				}
				points[s.Player] += s.Points
				if b.Live(e) {
					live = append(live, e.ID)
				}
			}
			w := h.b.Writer(tx, b)
			if err := w.AddScores(ctx, points, int64(len(b.Events))); err != nil {
				return err
			}
			if len(live) > 0 {
				return w.Effect(ctx, live)
			}
			return nil
		}}
}

func fastBackoff() broker.Backoff { return broker.ConstantBackoff(10 * time.Millisecond) }

func (h *harness[T]) projector(p cqrs.Projection[T], cfg cqrs.Config) *cqrs.Projector[T] {
	h.t.Helper()
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 100
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	if cfg.TakeoverInterval == 0 {
		cfg.TakeoverInterval = 50 * time.Millisecond
	}
	cfg.ProgressInterval = -1
	cfg.Logger = h.f.Logger
	pr, err := cqrs.NewProjector(h.b.Store, h.b.Events, Registry(), p, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	return pr
}

// start runs pr in the background until the returned stop is called (or
// the test ends); stop returns Run's error.
func (h *harness[T]) start(ctx context.Context, pr *cqrs.Projector[T]) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pr.Run(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			cancel()
			err = <-done
			stopped = true
		}
		return err
	}
	h.t.Cleanup(func() { _ = stop() })
	return stop
}

// waitState waits until cond holds for id's state.
func (h *harness[T]) waitState(id cqrs.ID, what string, cond func(cqrs.State) bool) cqrs.State {
	h.t.Helper()
	deadline := time.Now().Add(h.f.Timeout)
	for {
		st, err := h.b.Store.State(context.Background(), id)
		if err == nil && cond(st) {
			return st
		}
		if err != nil && !errors.Is(err, cqrs.ErrNotFound) {
			h.t.Fatalf("state of %s: %v", id, err)
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: %s not reached after %s (state %+v, err %v)", id, what, h.f.Timeout, st, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness[T]) waitAt(id cqrs.ID, pos eventsource.Position) cqrs.State {
	h.t.Helper()
	return h.waitState(id, "checkpoint "+pos.String(), func(st cqrs.State) bool { return !st.Checkpoint.Before(pos) })
}

func (h *harness[T]) checkModel(id cqrs.ID) {
	h.t.Helper()
	m, err := h.b.Read(h.ctx(), id)
	if err != nil {
		h.t.Fatal(err)
	}
	h.compare(id.String(), m)
}

func (h *harness[T]) compare(what string, m Model) {
	h.t.Helper()
	if !equal(m, h.expect) {
		h.t.Fatalf("%s: read model %v (events %d), want %v (events %d)", what, m.Scores, m.Events, h.expect.Scores, h.expect.Events)
	}
}

func equal(a, b Model) bool {
	if a.Events != b.Events {
		return false
	}
	n := 0
	for k, v := range a.Scores {
		if v != 0 {
			n++
			if b.Scores[k] != v {
				return false
			}
		}
	}
	m := 0
	for _, v := range b.Scores {
		if v != 0 {
			m++
		}
	}
	return n == m
}
