package eventsourcetest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// projection collects what a Reader delivers, as a projector would: the
// events of each handled batch and the checkpoint stored with them.
type projection struct {
	mu         sync.Mutex
	events     []eventsource.Envelope
	skipped    []eventsource.Skipped
	checkpoint eventsource.Position
	batches    int
	crashes    int
	// failAt makes the handler fail at that batch (a crash before the
	// checkpoint was stored); 0 never.
	failAt int
}

var errCrash = errors.New("projector crashed")

func (p *projection) handle(_ context.Context, b eventsource.Batch) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.checkpoint.Before(b.Checkpoint) {
		return fmt.Errorf("checkpoint did not move: %v after %v", b.Checkpoint, p.checkpoint)
	}
	p.batches++
	if p.batches == p.failAt {
		p.crashes++
		return errCrash
	}
	p.events = append(p.events, b.Events...)
	p.skipped = append(p.skipped, b.Skipped...)
	p.checkpoint = b.Checkpoint
	return nil
}

func (p *projection) snapshot() ([]eventsource.Envelope, eventsource.Position) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.events), p.checkpoint
}

// run starts r from the projection's checkpoint in the background; stop
// cancels it and returns Run's error.
func (p *projection) run(ctx context.Context, r *eventsource.Reader) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	_, from := p.snapshot()
	go func() { done <- r.Run(ctx, from, p.handle) }()
	return func() error { cancel(); return <-done }
}

// supervise runs r from the projection's checkpoint and starts it again
// from the stored checkpoint whenever the handler crashed, like a process
// supervisor. stop ends it and returns the last Run's error.
func (p *projection) supervise(ctx context.Context, r *eventsource.Reader) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		for {
			_, from := p.snapshot()
			err := r.Run(ctx, from, p.handle)
			if !errors.Is(err, errCrash) {
				done <- err
				return
			}
		}
	}()
	return func() error { cancel(); return <-done }
}

// crash makes the handler fail at the next batch.
func (p *projection) crash() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failAt = p.batches + 1
}

func checkDelivered(t testing.TB, got []eventsource.Envelope, want []eventsource.Record) {
	t.Helper()
	seen := map[string]bool{}
	for i, e := range got {
		if seen[e.ID] {
			t.Fatalf("event %s (stream %q version %d) delivered twice", e.ID, e.StreamID, e.Version)
		}
		seen[e.ID] = true
		if i >= len(want) || want[i].ID != e.ID {
			t.Fatalf("delivery %d is %s at %v; the log has %d events, there %v", i, e.ID, e.Position, len(want), want[min(i, len(want)-1)].Position)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("delivered %d events, the log holds %d", len(got), len(want))
	}
}

// testGapRace: one transaction appends first and stays open while many
// others append and commit. A reader running throughout delivers nothing
// past the open transaction, reports it as a stall (naming its session),
// and after it commits delivers every event exactly once in log order, the
// held one first; a restart from the stored checkpoint mid-stream changes
// nothing.
func testGapRace(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	before := appendOK(t, ctx, s, "early-1", eventsource.NoStream, added(t, "early", 1))

	held, pid := h.Begin(t, s)
	defer held.Rollback(ctx)
	heldRes := appendOK(t, ctx, held, "held-1", eventsource.NoStream, added(t, "held", 1))
	heldTx := heldRes.Position().Transaction

	stalls := make(chan eventsource.Stall, 64)
	logs := &testenv.LogRecorder{}
	meters := &gauges{}
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{BatchSize: 7, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(logs), MeterProvider: meters,
		StallAfter: 150 * time.Millisecond, OnStall: func(st eventsource.Stall) {
			select {
			case stalls <- st:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	p := &projection{}
	stop := p.run(ctx, r)

	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range each {
				stream := fmt.Sprintf("w%d-%d", w, k%3)
				if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.AnyVersion,
					Events: []eventsource.EventData{added(t, stream, k)}}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the event committed before the held transaction", func() bool {
		evs, _ := p.snapshot()
		return len(evs) == 1
	})
	// The held transaction is reported, and nothing after it is delivered.
	// Another transaction on the server, older than the held one, may be
	// reported first.
	var st eventsource.Stall
	for st.Blocker.Transaction != heldTx {
		select {
		case st = <-stalls:
			if st.Blocker.Transaction != heldTx {
				t.Logf("another transaction holds the log back: %+v", st)
			}
		case <-ctx.Done():
			t.Fatalf("no stall report naming transaction %d while it held the reader back", heldTx)
		}
	}
	if (pid != 0 && st.Blocker.PID != pid) || st.HeldFor < 150*time.Millisecond {
		t.Fatalf("stall report %+v, want pid %d", st, pid)
	}
	// The same report went to the log and the stall gauge.
	logged := false
	for _, rec := range logs.Records() {
		attrs := map[string]any{}
		rec.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.Any(); return true })
		if rec.Level == slog.LevelWarn && attrs["transaction"] == heldTx && attrs["pid"] == int64(st.Blocker.PID) && attrs["held_for"] != nil {
			logged = true
		}
	}
	if !logged {
		t.Fatalf("no warning naming transaction %d and pid %d among %d log records", heldTx, st.Blocker.PID, len(logs.Records()))
	}
	gauged := false
	for _, g := range meters.records(eventsource.MetricStall) {
		if p, ok := g.attrs.Value("db.pid"); ok && p.AsInt64() == int64(st.Blocker.PID) && g.value >= 0.15 {
			gauged = true
		}
	}
	if !gauged {
		t.Fatalf("the stall gauge did not record pid %d held for at least 150ms: %+v", st.Blocker.PID, meters.records(eventsource.MetricStall))
	}
	evs, cp := p.snapshot()
	if len(evs) != 1 || evs[0].Position != before.Position() {
		t.Fatalf("delivered %d events while held back, want only the one before it", len(evs))
	}
	if !cp.Before(heldRes.Position()) {
		t.Fatalf("checkpoint %v passed the held event %v", cp, heldRes.Position())
	}

	// Commit the held transaction; the reader crashes at its third batch
	// after that and restarts from its stored checkpoint.
	p.mu.Lock()
	p.failAt = p.batches + 3
	p.mu.Unlock()
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	total := 2 + writers*each
	waitFor(t, ctx, "the crash", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.batches >= p.failAt
	})
	if err := stop(); !errors.Is(err, errCrash) {
		t.Fatalf("Run returned %v, want the handler's error", err)
	}
	p.mu.Lock()
	p.failAt = 0
	p.mu.Unlock()
	evs, _ = p.snapshot()
	if len(evs) >= total {
		t.Fatalf("the crash happened after every event was delivered (%d)", len(evs))
	}
	stop = p.run(ctx, r)
	waitFor(t, ctx, "every event", func() bool {
		evs, _ := p.snapshot()
		return len(evs) >= total
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	evs, _ = p.snapshot()
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	checkLogOrder(t, log)
	checkDelivered(t, evs, log)
	cleared := false
	for _, g := range meters.records(eventsource.MetricStall) {
		if p, ok := g.attrs.Value("db.pid"); ok && p.AsInt64() == int64(st.Blocker.PID) && g.value == 0 {
			cleared = true
		}
	}
	if !cleared {
		t.Errorf("the stall gauge was not reset once the held transaction committed (pid %d): %+v", st.Blocker.PID, meters.records(eventsource.MetricStall))
	}
	if evs[1].StreamID != "held-1" {
		t.Fatalf("the held event came at %d: %q", 1, evs[1].StreamID)
	}
}

// testRandomCommits: transactions append to shared streams and commit or
// roll back in random order, while single appends run and a reader that
// crashes now and then follows the log. Every committed event is delivered
// exactly once, in log order; no rolled-back event is.
func testRandomCommits(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	r, err := eventsource.NewReader(s, newRegistry(), eventsource.ReaderConfig{BatchSize: 5, PollInterval: 10 * time.Millisecond, StallAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	p := &projection{}
	stop := p.supervise(ctx, r)
	var open []Tx
	var appenders sync.WaitGroup
	appenders.Add(1)
	go func() {
		defer appenders.Done()
		for k := range 60 {
			if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: fmt.Sprintf("single-%d", k%4), Expected: eventsource.AnyVersion,
				Events: []eventsource.EventData{added(t, "single", k)}}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for step := range 60 {
		switch {
		case len(open) < 4 && rng.IntN(2) == 0:
			tx, _ := h.Begin(t, s)
			stream := fmt.Sprintf("tx-%d", rng.IntN(3))
			if _, err := tx.Append(ctx, eventsource.StreamAppend{StreamID: fmt.Sprintf("own-%d", step), Expected: eventsource.NoStream,
				Events: []eventsource.EventData{added(t, "tx", step), added(t, "tx", step)}}); err != nil {
				t.Fatal(err)
			}
			// A second stream shared with other transactions: appending
			// waits while another open transaction holds it, so only do it
			// when none does.
			if len(open) == 0 {
				if _, err := tx.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.AnyVersion,
					Events: []eventsource.EventData{added(t, "tx", step)}}); err != nil {
					t.Fatal(err)
				}
			}
			open = append(open, tx)
		case len(open) > 0:
			i := rng.IntN(len(open))
			tx := open[i]
			open = slices.Delete(open, i, i+1)
			if rng.IntN(4) == 0 {
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
			} else if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if step%15 == 14 {
			p.crash()
		}
	}
	for _, tx := range open {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	appenders.Wait()
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	checkLogOrder(t, log)
	waitFor(t, ctx, "every event", func() bool {
		evs, _ := p.snapshot()
		return len(evs) >= len(log)
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	evs, _ := p.snapshot()
	checkDelivered(t, evs, log)
	if p.crashes == 0 {
		t.Fatal("the projector never crashed")
	}
	t.Logf("%d events over %d batches, %d crashes", len(evs), p.batches, p.crashes)
}

// testLogPages: what a page says: limits, the next checkpoint (the last
// record, or the fence once the log is read), HeldBack, and a checkpoint
// never moving backwards. Other transactions on the server may hold the
// log back at any time: the case waits for what it needs to see.
func testLogPages(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	empty, err := s.ReadLog(ctx, eventsource.LogQuery{})
	if err != nil || len(empty.Records) != 0 || empty.HeldBack {
		t.Fatalf("empty log: %+v, %v", empty, err)
	}
	var all []eventsource.Position
	for i := range 10 {
		all = append(all, appendOK(t, ctx, s, fmt.Sprintf("p-%d", i%3), eventsource.AnyVersion, added(t, "p", i)).Position())
	}
	readLogUntil(t, ctx, s, eventsource.LogQuery{Limit: 100}, 10)
	page, err := s.ReadLog(ctx, eventsource.LogQuery{Limit: 4})
	if err != nil || len(page.Records) != 4 || page.Next != all[3] {
		t.Fatalf("first page: %d records, next %v, want 4 and %v (%v)", len(page.Records), page.Next, all[3], err)
	}
	page, err = s.ReadLog(ctx, eventsource.LogQuery{After: page.Next, Limit: 100})
	if err != nil || len(page.Records) != 6 || page.Records[0].Position != all[4] {
		t.Fatalf("second page: %+v, %v", page, err)
	}
	if !all[9].Before(page.Next) || page.Next.Transaction != page.Fence || page.Next.Sequence != 0 || page.HeldBack {
		t.Fatalf("caught up: next %v, fence %d, held %v; want {fence, 0} after %v", page.Next, page.Fence, page.HeldBack, all[9])
	}
	// From the fence checkpoint, later events still come.
	cp := page.Next
	next := appendOK(t, ctx, s, "p-0", eventsource.AnyVersion, added(t, "p", 10)).Position()
	page = readLogUntil(t, ctx, s, eventsource.LogQuery{After: cp}, 1)
	if len(page.Records) != 1 || page.Records[0].Position != next {
		t.Fatalf("after the fence checkpoint: %+v", page)
	}
	// An open transaction holds the log back; committed events after it
	// wait and HeldBack says so.
	tx, _ := h.Begin(t, s)
	held := appendOK(t, ctx, tx, "p-held", eventsource.NoStream, added(t, "held", 1)).Position()
	later := appendOK(t, ctx, s, "p-later", eventsource.NoStream, added(t, "later", 1)).Position()
	page, err = s.ReadLog(ctx, eventsource.LogQuery{After: next})
	if err != nil || len(page.Records) != 0 || !page.HeldBack || page.Fence > held.Transaction {
		t.Fatalf("held back: %+v, %v (held %v, later %v)", page, err, held, later)
	}
	if page.Next.Before(next) || !page.Next.Before(held) {
		t.Fatalf("held back: next %v should stay between %v and %v", page.Next, next, held)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	page = readLogUntil(t, ctx, s, eventsource.LogQuery{After: page.Next}, 2)
	if len(page.Records) != 2 || page.Records[0].Position != held || page.Records[1].Position != later {
		t.Fatalf("after commit: %+v", page)
	}
	// A filter that matches nothing still moves the checkpoint to the fence.
	for {
		page, err = s.ReadLog(ctx, eventsource.LogQuery{Filter: eventsource.Filter{Types: []string{"nothing"}}})
		if err != nil || len(page.Records) != 0 {
			t.Fatalf("filtered: %+v, %v", page, err)
		}
		if later.Before(page.Next) {
			break
		}
		pause(t, ctx)
	}
}

// testFilter: category and type filters, with upcast types.
func testFilter(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	appendOK(t, ctx, s, "order-1", eventsource.NoStream, added(t, "o", 1), raw("item.added", 1, `{"name":"pen"}`))
	appendOK(t, ctx, s, "invoice-1", eventsource.NoStream, added(t, "i", 2), raw("item.added", 3, `{"title":"INK","qty":2}`))
	appendOK(t, ctx, s, "order-2", eventsource.NoStream, raw("item.added", 2, `{"name":"cap","qty":3}`))
	last := appendOK(t, ctx, s, "invoice-2", eventsource.NoStream, added(t, "i", 3))
	read := func(f eventsource.Filter) ([]string, eventsource.Position) {
		t.Helper()
		r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{Filter: f, BatchSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		b := readUntil(t, ctx, r, eventsource.Position{}, last.Position())
		for _, e := range b.Events {
			got = append(got, fmt.Sprintf("%s:%v", e.StreamID, e.Event))
		}
		return got, b.Checkpoint
	}
	got, cp := read(eventsource.Filter{StreamPrefixes: []string{eventsource.Category("order")}})
	if want := []string{"order-1:{o 1}", "order-1:{PEN 1}", "order-2:{CAP 3}"}; !slices.Equal(got, want) {
		t.Fatalf("category order: %v, want %v", got, want)
	}
	if !last.Position().Before(cp) {
		t.Fatalf("checkpoint %v did not pass the last event %v", cp, last.Position())
	}
	got, _ = read(eventsource.Filter{Types: []string{"item.added"}})
	if want := []string{"order-1:{PEN 1}", "invoice-1:{INK 2}", "order-2:{CAP 3}"}; !slices.Equal(got, want) {
		t.Fatalf("type item.added: %v, want %v", got, want)
	}
	got, _ = read(eventsource.Filter{Types: []string{"counter.added"}, StreamPrefixes: []string{"invoice-"}})
	if want := []string{"invoice-1:{i 2}", "invoice-2:{i 3}"}; !slices.Equal(got, want) {
		t.Fatalf("type and prefix: %v, want %v", got, want)
	}
	if _, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{Filter: eventsource.Filter{Types: []string{"no.such"}}}); !errors.Is(err, eventsource.ErrInvalidConfig) {
		t.Fatalf("filter on an unregistered type: %v", err)
	}
	// Hostile prefixes are matched literally.
	last = appendOK(t, ctx, s, "100%_x", eventsource.NoStream, added(t, "h", 1))
	got, _ = read(eventsource.Filter{StreamPrefixes: []string{"100%_"}})
	if len(got) != 1 {
		t.Fatalf("prefix with LIKE metacharacters: %v", got)
	}
	got, _ = read(eventsource.Filter{StreamPrefixes: []string{"%"}})
	if len(got) != 0 {
		t.Fatalf("prefix %%: %v", got)
	}
}

// testReadYourWrites: a projection whose checkpoint reaches a command's
// position reflects the command, also when its filter leaves the event out.
func testReadYourWrites(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	other, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{PollInterval: 10 * time.Millisecond,
		Filter: eventsource.Filter{StreamPrefixes: []string{"unrelated-"}}})
	if err != nil {
		t.Fatal(err)
	}
	pa, po := &projection{}, &projection{}
	defer pa.run(ctx, all)()
	defer po.run(ctx, other)()
	for i := range 5 {
		res, err := repo.Handle(ctx, fmt.Sprintf("ryw-%d", i%2), Add{By: "c", N: i})
		if err != nil {
			t.Fatal(err)
		}
		pos := res.Position()
		for _, p := range []*projection{pa, po} {
			waitFor(t, ctx, "the projection to pass the command", func() bool {
				_, cp := p.snapshot()
				return !cp.Before(pos)
			})
		}
		evs, _ := pa.snapshot()
		if len(evs) != i+1 || evs[i].Position != pos {
			t.Fatalf("checkpoint passed %v but the projection holds %d events", pos, len(evs))
		}
	}
}

// testNotify: a store with a Notifier wakes a reader that would otherwise
// poll only hourly.
func testNotify(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	if _, ok := s.(eventsource.Notifier); !ok {
		t.Skip("the store has no Notifier")
	}
	r, err := eventsource.NewReader(s, newRegistry(), eventsource.ReaderConfig{PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p := &projection{}
	defer p.run(ctx, r)()
	for i := range 3 {
		// Let the reader go to sleep first.
		time.Sleep(50 * time.Millisecond)
		appendOK(t, ctx, s, "n-1", eventsource.AnyVersion, added(t, "n", i))
		waitFor(t, ctx, "a notified delivery", func() bool {
			evs, _ := p.snapshot()
			return len(evs) == i+1
		})
	}
}

// testCheckpointAhead: a checkpoint beyond anything the store assigned
// (as after restoring an older backup) fails instead of skipping.
func testCheckpointAhead(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	res := appendOK(t, ctx, s, "a-1", eventsource.NoStream, added(t, "a", 1))
	for _, after := range []eventsource.Position{
		{Transaction: res.Position().Transaction + 1<<40},
		{Transaction: res.Position().Transaction, Sequence: res.Position().Sequence + 1<<40},
	} {
		if _, err := s.ReadLog(ctx, eventsource.LogQuery{After: after}); !errors.Is(err, eventsource.ErrCheckpointAhead) {
			t.Fatalf("read after %v: %v, want ErrCheckpointAhead", after, err)
		}
	}
	r, err := eventsource.NewReader(s, newRegistry(), eventsource.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(ctx, eventsource.Position{Transaction: 1 << 50}, func(context.Context, eventsource.Batch) error { return nil })
	if !errors.Is(err, eventsource.ErrCheckpointAhead) {
		t.Fatalf("Run from a checkpoint ahead: %v", err)
	}
	// The checkpoint of the last event, and the one past it, are fine.
	page, err := s.ReadLog(ctx, eventsource.LogQuery{After: res.Position()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadLog(ctx, eventsource.LogQuery{After: page.Next}); err != nil {
		t.Fatal(err)
	}
}
