package cqrstest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// project: every event once, the state counts them, side effects once.
func project[T any](h *harness[T]) {
	h.append(h.f.Events / 2)
	p := h.projection("scores", 1, cqrs.Stop, nil)
	pr := h.projector(p, cqrs.Config{Activate: true})
	h.start(h.ctx(), pr)
	h.append(h.f.Events / 2)
	st := h.waitAt(p.ID, h.last)
	h.checkModel(p.ID)
	if st.Events != h.expect.Events || st.Status != cqrs.StatusRunning || st.Skipped != 0 {
		h.t.Fatalf("state %+v, want %d events, running, none skipped", st, h.expect.Events)
	}
	h.waitState(p.ID, "active", func(st cqrs.State) bool { return st.Active })
	m, err := h.b.ReadActive(h.ctx(), "scores")
	if err != nil {
		h.t.Fatal(err)
	}
	h.compare("serving model", m)
	effects, err := h.b.Effects(h.ctx(), "scores")
	if err != nil {
		h.t.Fatal(err)
	}
	if len(effects) != int(h.expect.Events) {
		h.t.Fatalf("%d side effects, want %d", len(effects), h.expect.Events)
	}
	if err := pr.Wait(h.ctx(), h.last); err != nil {
		h.t.Fatal(err)
	}
}

// Points of the projector where the crash case stops it.
var crashPointNames = []string{"cqrs.projector.run", "cqrs.projector.batch", "cqrs.projector.applied", "cqrs.projector.committed"}

// crashPoints: at each fault point, a crash (the projector stops there, as
// a dead process would, and its lease ends) on several batches; the
// restarted projector's read model equals a clean replay.
func crashPoints[T any](h *harness[T]) {
	h.append(h.f.Events)
	for i, point := range append(slices.Clone(crashPointNames), h.f.CrashPoints...) {
		p := h.projection(fmt.Sprintf("crash_%d", i), 1, cqrs.Stop, nil)
		var hits, crashes atomic.Int64
		inj := func(name string, _ any) error {
			if name != point {
				return nil
			}
			// Crash at the 2nd, 5th and 9th time the point is reached.
			n := hits.Add(1)
			if point == "cqrs.projector.run" && n <= 2 || point != "cqrs.projector.run" && (n == 2 || n == 5 || n == 9) {
				crashes.Add(1)
				return fmt.Errorf("cqrstest: crash at %s", point)
			}
			return nil
		}
		pr := h.projector(p, cqrs.Config{BatchSize: 97})
		stop := h.start(fault.With(h.ctx(), inj), pr)
		h.waitAt(p.ID, h.last)
		if err := stop(); err != nil {
			h.t.Fatalf("%s: %v", point, err)
		}
		if crashes.Load() == 0 {
			h.t.Fatalf("%s: never reached", point)
		}
		h.checkModel(p.ID)
		st, _ := h.b.Store.State(h.ctx(), p.ID)
		if st.Events != h.expect.Events {
			h.t.Fatalf("%s: state counts %d events, want %d", point, st.Events, h.expect.Events)
		}
	}
}

// twoInstances: two projectors of one version; one holds the lease and
// applies; when it dies the other takes over; nothing applied twice.
func twoInstances[T any](h *harness[T]) {
	h.append(h.f.Events / 2)
	p := h.projection("pair", 1, cqrs.Stop, nil)
	a := h.projector(p, cqrs.Config{Owner: "a"})
	b := h.projector(p, cqrs.Config{Owner: "b"})
	stopA := h.start(h.ctx(), a)
	stopB := h.start(h.ctx(), b)
	h.waitAt(p.ID, h.last)
	h.checkModel(p.ID)
	if a.Holding() == b.Holding() {
		h.t.Fatalf("holding: a %v, b %v; want exactly one", a.Holding(), b.Holding())
	}
	holder, other, stopHolder := a, b, stopA
	if b.Holding() {
		holder, other, stopHolder = b, a, stopB
	}
	st, _ := h.b.Store.State(h.ctx(), p.ID)
	h.t.Logf("holder %s", st.Owner)
	if h.b.Kill != nil {
		h.b.Kill(h.t, p.ID)
	} else {
		_ = stopHolder()
	}
	start := time.Now()
	h.append(h.f.Events / 2)
	h.waitAt(p.ID, h.last)
	h.t.Logf("handed over and caught up in %s", time.Since(start).Round(time.Millisecond))
	h.checkModel(p.ID)
	if h.b.Kill == nil && !other.Holding() {
		h.t.Fatal("the standby does not hold the lease")
	}
	_ = holder
	st, _ = h.b.Store.State(h.ctx(), p.ID)
	if st.Events != h.expect.Events {
		h.t.Fatalf("state counts %d events, want %d", st.Events, h.expect.Events)
	}
}

// checkedWrite: the lease is exclusive, and a checkpoint write that does
// not start from the stored checkpoint commits nothing.
func checkedWrite[T any](h *harness[T]) {
	ctx := h.ctx()
	id := cqrs.ID{Name: "checked", Version: 1}
	h.projection(id.Name, id.Version, cqrs.Stop, nil)
	l, err := h.b.Store.Acquire(ctx, id, "one")
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.b.Store.Acquire(ctx, id, "two"); !errors.Is(err, cqrs.ErrLocked) {
		h.t.Fatalf("second Acquire: %v, want ErrLocked", err)
	}
	p1 := eventsource.Position{Transaction: 10, Sequence: 1}
	p2 := eventsource.Position{Transaction: 11, Sequence: 2}
	write := func(from, to eventsource.Position, points int64) error {
		b := &cqrs.Batch{Projection: id, From: from, Checkpoint: to}
		return l.Apply(ctx, cqrs.Commit{From: from, To: to, Events: 1}, func(ctx context.Context, tx T, live eventsource.Position) error {
			return h.b.Writer(tx, b).AddScores(ctx, map[string]int64{"x": points}, 1)
		})
	}
	if err := write(eventsource.Position{}, p1, 5); err != nil {
		h.t.Fatal(err)
	}
	// A second instance that started from the same checkpoint, while
	// another got ahead: refused.
	if err := write(eventsource.Position{}, p2, 100); !errors.Is(err, cqrs.ErrCheckpointConflict) {
		h.t.Fatalf("stale write: %v, want ErrCheckpointConflict", err)
	}
	// A failing handler commits nothing.
	boom := errors.New("boom")
	err = l.Apply(ctx, cqrs.Commit{From: p1, To: p2, Events: 1}, func(ctx context.Context, tx T, live eventsource.Position) error {
		if err := h.b.Writer(tx, &cqrs.Batch{Projection: id}).AddScores(ctx, map[string]int64{"x": 1000}, 1); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		h.t.Fatalf("failing handler: %v, want its error", err)
	}
	if err := write(p1, p2, 7); err != nil {
		h.t.Fatal(err)
	}
	m, err := h.b.Read(ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	if m.Scores["x"] != 12 || m.Events != 2 {
		h.t.Fatalf("model %+v, want x=12 over 2 events", m)
	}
	st, err := l.State(ctx)
	if err != nil || st.Checkpoint != p2 || st.Events != 2 {
		h.t.Fatalf("state %+v, %v; want checkpoint %s, 2 events", st, err, p2)
	}
	if err := l.Fail(ctx, p1, cqrs.StatusStopped, 1, "x"); !errors.Is(err, cqrs.ErrCheckpointConflict) {
		h.t.Fatalf("stale Fail: %v, want ErrCheckpointConflict", err)
	}
	if err := l.Release(ctx); err != nil {
		h.t.Fatal(err)
	}
	l2, err := h.b.Store.Acquire(ctx, id, "two")
	if err != nil {
		h.t.Fatalf("Acquire after Release: %v", err)
	}
	_ = l2.Release(ctx)
	if _, err := h.b.Store.State(ctx, cqrs.ID{Name: "never", Version: 1}); !errors.Is(err, cqrs.ErrNotFound) {
		h.t.Fatalf("state of a projection that never ran: %v, want ErrNotFound", err)
	}
}

// poisonRun projects 30 good events, a poison one, 30 good ones, under pol.
func poisonRun[T any](h *harness[T], name string, pol cqrs.Policy, bad ScoreAdded, c *counters) (cqrs.Projection[T], eventsource.Position, error) {
	h.append(30)
	h.before = Model{Scores: maps.Clone(h.expect.Scores), Events: h.expect.Events}
	badPos := h.appendScore(bad, false)
	h.append(30)
	p := h.projection(name, 1, pol, c)
	pr := h.projector(p, cqrs.Config{BatchSize: 25})
	ctx, cancel := context.WithTimeout(h.ctx(), h.f.Timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pr.Run(ctx) }()
	if pol == cqrs.Stop || (pol == cqrs.Retry && c.flakyOK >= 3) {
		return p, badPos, <-done
	}
	h.waitAt(p.ID, h.last)
	cancel()
	return p, badPos, <-done
}

func poisonStop[T any](h *harness[T]) {
	p, badPos, err := poisonRun(h, "poison_stop", cqrs.Stop, ScoreAdded{Player: "p1", Points: -1}, nil)
	var perr *cqrs.PoisonError
	if !errors.Is(err, cqrs.ErrPoison) || !errors.As(err, &perr) || perr.Position != badPos.String() {
		h.t.Fatalf("Run: %v, want a PoisonError at %s", err, badPos)
	}
	st := h.waitState(p.ID, "stopped", func(st cqrs.State) bool { return st.Status == cqrs.StatusStopped })
	if st.Error == "" || !st.Checkpoint.Before(badPos) || st.Events != 30 {
		h.t.Fatalf("state %+v: want the error, the checkpoint before %s, 30 events", st, badPos)
	}
	// Stopped stays stopped.
	pr := h.projector(p, cqrs.Config{})
	if err := pr.Run(h.ctx()); !errors.Is(err, cqrs.ErrStopped) {
		h.t.Fatalf("Run of a stopped projection: %v, want ErrStopped", err)
	}
	// The model holds exactly the events before the poison one.
	h.expect = h.before
	h.checkModel(p.ID)
	// Reset: it fails again on the same event (still poison).
	if err := h.b.Store.Reset(h.ctx(), p.ID); err != nil {
		h.t.Fatal(err)
	}
	st, _ = h.b.Store.State(h.ctx(), p.ID)
	if st.Status != cqrs.StatusRunning || st.Attempts != 0 {
		h.t.Fatalf("state after Reset %+v", st)
	}
	if err := pr.Run(h.ctx()); !errors.Is(err, cqrs.ErrPoison) {
		h.t.Fatalf("Run after Reset: %v, want ErrPoison again", err)
	}
}

func poisonSkip[T any](h *harness[T]) {
	p, badPos, err := poisonRun(h, "poison_skip", cqrs.Skip, ScoreAdded{Player: "p1", Points: -1}, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	h.checkModel(p.ID)
	st, _ := h.b.Store.State(h.ctx(), p.ID)
	if st.Skipped != 1 || st.Events != 60 || st.Status != cqrs.StatusRunning {
		h.t.Fatalf("state %+v, want 1 skipped, 60 events, running", st)
	}
	if sk, ok := h.b.Store.(interface {
		Skipped(context.Context, cqrs.ID, int) ([]cqrs.SkippedEvent, error)
	}); ok {
		list, err := sk.Skipped(h.ctx(), p.ID, 10)
		if err != nil || len(list) != 1 || list[0].Position != badPos || list[0].Type != TypeScoreAdded || list[0].Error == "" {
			h.t.Fatalf("skipped list %+v, %v; want the event at %s", list, err, badPos)
		}
	}
}

func poisonRetry[T any](h *harness[T]) {
	// Fails twice, then succeeds: applied once, nothing skipped.
	c := &counters{flakyOK: 2}
	p, firstBad, err := poisonRun(h, "poison_retry", cqrs.Retry, ScoreAdded{Player: "p3", Points: Flaky}, c)
	if err != nil {
		h.t.Fatal(err)
	}
	h.expect.Scores["p3"] += Flaky
	h.expect.Events++
	h.checkModel(p.ID)
	if c.flaky != 2 {
		h.t.Fatalf("flaky handler failed %d times, want 2", c.flaky)
	}
	// Fails more often than MaxAttempts (3): stopped after 3 attempts.
	h2 := &harness[T]{t: h.t, f: h.f, b: h.b, n: 100000}
	c2 := &counters{flakyOK: 1000}
	p2, badPos, err := poisonRun(h2, "poison_retry_stop", cqrs.Retry, ScoreAdded{Player: "p3", Points: Flaky}, c2)
	var perr *cqrs.PoisonError
	// It starts from the log's beginning: the first flaky event stops it.
	if !errors.As(err, &perr) || perr.Attempts != 3 || perr.Position != firstBad.String() {
		h.t.Fatalf("Run: %v, want a PoisonError after 3 attempts at %s (not %s)", err, firstBad, badPos)
	}
	st, _ := h.b.Store.State(h.ctx(), p2.ID)
	if st.Status != cqrs.StatusStopped || st.Attempts != 3 {
		h.t.Fatalf("state %+v, want stopped after 3 attempts", st)
	}
}

// unregistered: an event type the registry does not know stops a Stop
// projection with an error wrapping eventsource.ErrUnknownEvent, and is
// recorded by a Skip one.
func unregistered[T any](h *harness[T]) {
	h.append(10)
	bad := h.appendRaw("score.unknown", []byte(`{}`))
	h.append(10)
	p := h.projection("unknown_stop", 1, cqrs.Stop, nil)
	err := h.projector(p, cqrs.Config{}).Run(h.ctx())
	if !errors.Is(err, eventsource.ErrUnknownEvent) {
		h.t.Fatalf("Run: %v, want ErrUnknownEvent", err)
	}
	st, _ := h.b.Store.State(h.ctx(), p.ID)
	if st.Status != cqrs.StatusStopped || st.Events != 10 || !st.Checkpoint.Before(bad) {
		h.t.Fatalf("state %+v, want stopped before %s after 10 events", st, bad)
	}
	ps := h.projection("unknown_skip", 1, cqrs.Skip, nil)
	pr := h.projector(ps, cqrs.Config{})
	h.start(h.ctx(), pr)
	st = h.waitAt(ps.ID, h.last)
	if st.Skipped != 1 || st.Events != 20 {
		h.t.Fatalf("state %+v, want 1 skipped, 20 events", st)
	}
	h.checkModel(ps.ID)
}

// blueGreen: version 2 rebuilds while version 1 serves and a query loop
// reads the serving model; the swap is atomic (every read sees a complete
// model) and side effects are not repeated by the rebuild.
func blueGreen[T any](h *harness[T]) {
	ctx := h.ctx()
	h.append(h.f.Events)
	p1 := h.projection("board", 1, cqrs.Stop, nil)
	stop1 := h.start(ctx, h.projector(p1, cqrs.Config{Activate: true}))
	h.waitAt(p1.ID, h.last)
	h.waitState(p1.ID, "active", func(st cqrs.State) bool { return st.Active })

	var reads atomic.Int64
	loopErr := make(chan error, 1)
	loopCtx, stopLoop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for loopCtx.Err() == nil {
			m, err := h.b.ReadActive(loopCtx, "board")
			if loopCtx.Err() != nil {
				break
			}
			if err == nil && !equal(m, h.expect) {
				err = fmt.Errorf("read %d: serving model with %d events, want %d", reads.Load(), m.Events, h.expect.Events)
			}
			if err != nil {
				loopErr <- err
				return
			}
			reads.Add(1)
		}
		loopErr <- nil
	}()
	p2 := h.projection("board", 2, cqrs.Stop, nil)
	stop2 := h.start(ctx, h.projector(p2, cqrs.Config{Activate: true, BatchSize: 250}))
	h.waitState(p2.ID, "active", func(st cqrs.State) bool { return st.Active })
	for reads.Load() < 20 {
		time.Sleep(time.Millisecond)
	}
	stopLoop()
	wg.Wait()
	if err := <-loopErr; err != nil {
		h.t.Fatal(err)
	}
	h.t.Logf("%d reads of the serving model during the rebuild and swap", reads.Load())
	if v, err := h.b.Store.ActiveVersion(ctx, "board"); err != nil || v != 2 {
		h.t.Fatalf("active version %d, %v; want 2", v, err)
	}
	// New events: both versions apply them; side effects happen once.
	h.append(50)
	h.waitAt(p1.ID, h.last)
	h.waitAt(p2.ID, h.last)
	h.checkModel(p1.ID)
	h.checkModel(p2.ID)
	_ = stop1()
	_ = stop2()
	effects, err := h.b.Effects(ctx, "board")
	if err != nil {
		h.t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range effects {
		if seen[id] {
			h.t.Fatalf("side effect of %s done twice", id)
		}
		seen[id] = true
	}
	if len(effects) != int(h.expect.Events) {
		h.t.Fatalf("%d side effects, want %d", len(effects), h.expect.Events)
	}
	m, err := h.b.ReadActive(ctx, "board")
	if err != nil {
		h.t.Fatal(err)
	}
	h.compare("serving model after the swap", m)
}

// readYourWrites: Wait returns once the serving version passed the
// position, and times out cleanly otherwise.
func readYourWrites[T any](h *harness[T]) {
	ctx := h.ctx()
	p := h.projection("ryw", 1, cqrs.Stop, nil)
	pr := h.projector(p, cqrs.Config{Activate: true})
	h.start(ctx, pr)
	h.waitState(p.ID, "active", func(st cqrs.State) bool { return st.Active })
	for i := range 5 {
		pos := h.appendScore(ScoreAdded{Player: "me", Points: int64(i + 1)}, true)
		if err := cqrs.Wait(ctx, h.b.Store, "ryw", pos, h.f.Timeout); err != nil {
			h.t.Fatal(err)
		}
		m, err := h.b.ReadActive(ctx, "ryw")
		if err != nil {
			h.t.Fatal(err)
		}
		h.compare(fmt.Sprintf("after write %d", i), m)
		if err := pr.Wait(ctx, pos); err != nil {
			h.t.Fatal(err)
		}
	}
	far := eventsource.Position{Transaction: 1 << 62}
	start := time.Now()
	err := cqrs.Wait(ctx, h.b.Store, "ryw", far, 200*time.Millisecond)
	if !errors.Is(err, cqrs.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		h.t.Fatalf("Wait for a position never reached: %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el > h.f.Timeout/2 {
		h.t.Fatalf("Wait with a 200ms timeout returned after %s", el)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := pr.Wait(short, far); !errors.Is(err, cqrs.ErrTimeout) {
		h.t.Fatalf("Projector.Wait: %v, want ErrTimeout", err)
	}
	if err := cqrs.Wait(ctx, h.b.Store, "nobody", eventsource.Position{Transaction: 1}, 50*time.Millisecond); !errors.Is(err, cqrs.ErrTimeout) {
		h.t.Fatalf("Wait on a projection with no serving version: %v, want ErrTimeout", err)
	}
}
