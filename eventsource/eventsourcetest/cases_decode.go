package eventsourcetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventsource"
)

// testUpcasting: events stored as versions 1, 2 and 3 come out as version
// 3 on every read path: stream loads, the global reader, and the state
// snapshots are made of; a split becomes several events at one position.
func testUpcasting(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	cart := appendOK(t, ctx, s, "cart-1", eventsource.NoStream,
		raw("item.added", 1, `{"name":"pen"}`),
		raw("item.added", 2, `{"name":"cap","qty":3}`),
		raw("item.added", 3, `{"title":"INK","qty":2}`))
	want := []string{"PEN x1", "CAP x3", "INK x2"}

	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(4)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := repo.Load(ctx, "cart-1")
	if err != nil || !slices.Equal(l.State.Items, want) || l.Version != 3 {
		t.Fatalf("load: %+v, %v; want items %v", l, err, want)
	}
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b := readUntil(t, ctx, r, eventsource.Position{}, cart.Position())
	if len(b.Events) != 3 {
		t.Fatalf("reader: %+v", b)
	}
	for i, e := range b.Events {
		v, ok := e.Event.(ItemV3)
		if !ok || fmt.Sprintf("%s x%d", v.Title, v.Qty) != want[i] || e.Type != "item.added" || e.SchemaVersion != []int{1, 2, 3}[i] {
			t.Fatalf("reader event %d: %+v", i, e)
		}
	}
	// The command crosses the snapshot threshold: the snapshot holds the
	// upcast state, and a load from it reads only its own event.
	if _, err := repo.Handle(ctx, "cart-1", Add{By: "u", N: 1}); err != nil {
		t.Fatal(err)
	}
	l, err = repo.Load(ctx, "cart-1")
	if err != nil || l.Snapshot != 4 || l.EventsRead != 1 || !slices.Equal(l.State.Items, want) || l.State.Total != 1 {
		t.Fatalf("load from the snapshot: %+v, %v", l, err)
	}

	// One stored event split in two.
	reg2 := newRegistry()
	type Pair struct {
		A, B string
	}
	eventsource.Register[Pair](reg2, "item.pair", 1)
	eventsource.Register[ItemV3](reg2, "item.pair", 2)
	eventsource.UpcastMany(reg2, func(p Pair) ([]any, error) {
		return []any{ItemV2{Name: p.A, Qty: 1}, ItemV3{Title: p.B, Qty: 1}}, nil
	})
	if err := reg2.Check(); err == nil {
		t.Fatal("one Go type registered under two names passed Check")
	}
	reg3 := newRegistry()
	type PairV2 struct{}
	eventsource.Register[Pair](reg3, "item.pair", 1)
	eventsource.Register[PairV2](reg3, "item.pair", 2)
	eventsource.UpcastMany(reg3, func(p Pair) ([]any, error) {
		return []any{ItemV2{Name: p.A, Qty: 1}, ItemV3{Title: p.B, Qty: 1}}, nil
	})
	res := appendOK(t, ctx, s, "cart-2", eventsource.NoStream, raw("item.pair", 1, `{"A":"x","B":"Y"}`))
	r3, err := eventsource.NewReader(s, reg3, eventsource.ReaderConfig{Filter: eventsource.Filter{StreamPrefixes: []string{"cart-2"}}})
	if err != nil {
		t.Fatal(err)
	}
	b = readUntil(t, ctx, r3, eventsource.Position{}, res.Position())
	if len(b.Events) != 2 || b.Events[0].Index != 0 || b.Events[1].Index != 1 ||
		b.Events[0].Position != res.Position() || b.Events[1].Position != res.Position() ||
		b.Events[0].Event != (ItemV3{Title: "X", Qty: 1}) || b.Events[1].Event != (ItemV3{Title: "Y", Qty: 1}) {
		t.Fatalf("split: %+v", b.Events)
	}
	repo3, err := eventsource.NewRepository(s, reg3, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := repo3.Load(ctx, "cart-2"); err != nil || !slices.Equal(l.State.Items, []string{"X x1", "Y x1"}) || l.Events != 2 {
		t.Fatalf("load of a split: %+v, %v", l, err)
	}
}

// testRegistryCheck: the registry refuses a broken upcaster graph at
// start-up, naming the problem.
func testRegistryCheck(t *testing.T, h *Harness) {
	s := h.New(t)
	type A1 struct{ X int }
	type A2 struct{ X int }
	type B1 struct{ X int }
	type B2 struct{ X int }
	type Any interface{ isAny() }
	for _, tc := range []struct {
		name  string
		setup func(r *eventsource.Registry)
		want  string
	}{
		{"gap", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[A2](r, "a", 3)
			eventsource.Upcast(r, func(v A1) A2 { return A2(v) })
		}, "versions 1 and 3 are registered but not 2"},
		{"no upcaster", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[A2](r, "a", 2)
		}, "has no upcaster"},
		{"cycle", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[A2](r, "a", 2)
			eventsource.Register[B1](r, "b", 1)
			eventsource.Register[B2](r, "b", 2)
			eventsource.Upcast(r, func(v A1) B1 { return B1(v) })
			eventsource.Upcast(r, func(v B1) A1 { return A1(v) })
		}, "cycle"},
		{"upcaster from the current version", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[B1](r, "b", 1)
			eventsource.Upcast(r, func(v A1) B1 { return B1(v) })
		}, "is the current version"},
		{"unregistered target", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[A2](r, "a", 2)
			eventsource.Upcast(r, func(v A1) B1 { return B1(v) })
		}, "not registered"},
		{"upcaster from an unregistered type", func(r *eventsource.Registry) {
			eventsource.Upcast(r, func(v B2) B1 { return B1(v) })
		}, "register"},
		{"reserved name", func(r *eventsource.Registry) { eventsource.Register[A1](r, "steadfast-x", 1) }, "reserved"},
		{"empty name", func(r *eventsource.Registry) { eventsource.Register[A1](r, "", 1) }, "printable"},
		{"version 0", func(r *eventsource.Registry) { eventsource.Register[A1](r, "a", 0) }, "versions start at 1"},
		{"twice", func(r *eventsource.Registry) {
			eventsource.Register[A1](r, "a", 1)
			eventsource.Register[A2](r, "a", 1)
		}, "already registered"},
		{"interface", func(r *eventsource.Registry) { eventsource.Register[Any](r, "a", 1) }, "interface"},
	} {
		r := newRegistry()
		tc.setup(r)
		err := r.Check()
		if !errors.Is(err, eventsource.ErrInvalidRegistry) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Check = %v, want ErrInvalidRegistry mentioning %q", tc.name, err, tc.want)
			continue
		}
		if _, err := eventsource.NewRepository(s, r, counterDecider(), eventsource.RepositoryConfig[Counter]{}); !errors.Is(err, eventsource.ErrInvalidRegistry) {
			t.Errorf("%s: NewRepository = %v", tc.name, err)
		}
		if _, err := eventsource.NewReader(s, r, eventsource.ReaderConfig{}); !errors.Is(err, eventsource.ErrInvalidRegistry) {
			t.Errorf("%s: NewReader = %v", tc.name, err)
		}
	}
	if err := newRegistry().Check(); err != nil {
		t.Fatalf("the suite's registry: %v", err)
	}
	ctx := context.Background()
	if _, err := newRegistry().Encode(ctx, ItemV1{}); !errors.Is(err, eventsource.ErrUnregistered) || !strings.Contains(err.Error(), "superseded") {
		t.Errorf("encode a superseded version: %v", err)
	}
	if _, err := newRegistry().Encode(ctx, struct{ Y int }{}); !errors.Is(err, eventsource.ErrUnregistered) {
		t.Errorf("encode an unregistered type: %v", err)
	}
	if _, err := newRegistry().Encode(ctx, &Added{}); !errors.Is(err, eventsource.ErrUnregistered) {
		t.Errorf("encode a pointer to a registered value type: %v", err)
	}
}

// testUnknownEvent: an unknown type or version, or an undecodable payload,
// is a clear error on load; the reader stops at it (Stop) or skips and
// records it (Skip); nothing is lost either way.
func testUnknownEvent(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	first := appendOK(t, ctx, s, "u-1", eventsource.NoStream, added(t, "a", 1))
	appendOK(t, ctx, s, "u-1", 1, raw("mystery", 1, `{}`))
	appendOK(t, ctx, s, "u-1", 2, added(t, "a", 2))
	appendOK(t, ctx, s, "u-2", eventsource.NoStream, raw("item.added", 9, `{}`))
	appendOK(t, ctx, s, "u-3", eventsource.NoStream, raw("counter.added", 1, `{not json`))
	last := appendOK(t, ctx, s, "u-4", eventsource.NoStream, added(t, "a", 3))

	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = repo.Load(ctx, "u-1")
	var ue *eventsource.UnknownEventError
	if !errors.As(err, &ue) || ue.Type != "mystery" || ue.SchemaVersion != 1 || ue.StreamID != "u-1" || ue.Version != 2 ||
		!strings.Contains(err.Error(), `"mystery" version 1`) {
		t.Fatalf("load with an unknown type: %v", err)
	}
	if _, err := repo.Load(ctx, "u-2"); !errors.As(err, &ue) || ue.Type != "item.added" || ue.SchemaVersion != 9 {
		t.Fatalf("load with an unknown version: %v", err)
	}
	var de *eventsource.DecodeError
	if _, err := repo.Load(ctx, "u-3"); !errors.Is(err, eventsource.ErrUndecodable) || !errors.As(err, &de) || de.StreamID != "u-3" {
		t.Fatalf("load of an undecodable payload: %v", err)
	}
	if _, err := repo.Handle(ctx, "u-1", Add{N: 1}); !errors.Is(err, eventsource.ErrUnknownEvent) {
		t.Fatalf("handle on a stream with an unknown event: %v", err)
	}

	stop, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Stop: the events before the unknown one, then its error, again and
	// again from that checkpoint.
	var got []eventsource.Envelope
	pos := eventsource.Position{}
	for {
		b, err := stop.Read(ctx, pos)
		if err != nil {
			if !errors.As(err, &ue) || ue.Type != "mystery" {
				t.Fatalf("Stop: read at the unknown event: %v", err)
			}
			break
		}
		got = append(got, b.Events...)
		if b.Checkpoint == pos {
			pause(t, ctx)
		}
		pos = b.Checkpoint
	}
	if len(got) != 1 || got[0].Position != first.Position() || pos.Before(first.Position()) {
		t.Fatalf("Stop: delivered %d events up to %v; want the one at %v before the unknown one", len(got), pos, first.Position())
	}
	if _, err := stop.Read(ctx, pos); !errors.As(err, &ue) {
		t.Fatalf("Stop: read again at the unknown event: %v", err)
	}
	if err := stop.Run(ctx, pos, func(context.Context, eventsource.Batch) error { return nil }); !errors.Is(err, eventsource.ErrUnknownEvent) {
		t.Fatalf("Stop: Run = %v", err)
	}

	skip, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{Undecodable: eventsource.Skip, BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	p := &projection{}
	defer p.run(ctx, skip)()
	waitFor(t, ctx, "the skipping reader", func() bool {
		_, cp := p.snapshot()
		return !cp.Before(last.Position())
	})
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) != 3 || len(p.skipped) != 3 {
		t.Fatalf("Skip: %d events, %d skipped; want 3 and 3", len(p.events), len(p.skipped))
	}
	for i, want := range []error{eventsource.ErrUnknownEvent, eventsource.ErrUnknownEvent, eventsource.ErrUndecodable} {
		if !errors.Is(p.skipped[i].Err, want) {
			t.Fatalf("skipped %d: %v, want %v", i, p.skipped[i].Err, want)
		}
	}
	if p.skipped[0].Record.Type != "mystery" || p.skipped[2].Record.StreamID != "u-3" {
		t.Fatalf("skipped records %+v", p.skipped)
	}
	// Nothing was lost: every stored event is still there.
	if n := len(drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})); n != 6 {
		t.Fatalf("log holds %d events, want 6", n)
	}
}

// testSnapshotTail: a load from a snapshot reads only the events after it
// (plus the snapshot's own event, which checks it).
func testSnapshotTail(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	n := h.Features.LargeStream
	const stream = "big-1"
	const chunk = 500
	total := 0
	for v := 0; v < n; v += chunk {
		evs := make([]eventsource.EventData, min(chunk, n-v))
		for i := range evs {
			evs[i] = added(t, "bulk", v+i)
			total += v + i
		}
		appendOK(t, ctx, s, stream, eventsource.ExpectedVersion(v), evs...)
	}
	plain, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	snapping, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(int64(n))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := snapping.Load(ctx, stream)
	if err != nil || l.EventsRead != n || l.Snapshot != 0 || l.State.Total != total {
		t.Fatalf("first load: read %d, snapshot %d, total %d (%v); want %d, 0, %d", l.EventsRead, l.Snapshot, l.State.Total, err, n, total)
	}
	// The next command crosses the threshold and snapshots.
	if _, err := snapping.Handle(ctx, stream, Add{By: "x", N: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := plain.Handle(ctx, stream, Add{By: "y", N: i}); err != nil {
			t.Fatal(err)
		}
	}
	l, err = snapping.Load(ctx, stream)
	if err != nil || l.Snapshot != int64(n+1) || l.EventsRead != 6 || l.Version != int64(n+6) || l.State.Total != total+1+10 {
		t.Fatalf("load with a snapshot: %+v (items omitted), %v; want snapshot %d, 6 events read", struct {
			Snapshot, Version int64
			Read, Total       int
		}{l.Snapshot, l.Version, l.EventsRead, l.State.Total}, err, n+1)
	}
	full, err := plain.Load(ctx, stream)
	if err != nil || full.EventsRead != n+6 || full.State.Total != l.State.Total || full.State.Events != l.State.Events {
		t.Fatalf("full replay: read %d, total %d, events %d (%v); the snapshot load gave total %d, events %d",
			full.EventsRead, full.State.Total, full.State.Events, err, l.State.Total, l.State.Events)
	}
}

// testSnapshotSchema: a snapshot of another state schema version is upcast
// or ignored, never misread.
func testSnapshotSchema(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	v1, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := v1.Handle(ctx, "sv-1", Add{By: "a", N: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	if l, err := v1.Load(ctx, "sv-1"); err != nil || l.Snapshot != 3 || l.EventsRead != 1 {
		t.Fatalf("v1 load: %+v, %v", l, err)
	}
	// Version 2 of the state doubles Total's meaning; without an upcaster
	// the v1 snapshot is ignored and the stream replayed.
	v2, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(100), SnapshotVersion: 2})
	if err != nil {
		t.Fatal(err)
	}
	if l, err := v2.Load(ctx, "sv-1"); err != nil || l.Snapshot != 0 || l.EventsRead != 3 || l.State.Total != 6 {
		t.Fatalf("v2 load without an upcaster: %+v, %v", l, err)
	}
	up, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(100), SnapshotVersion: 2,
		UpcastSnapshot: func(version int, data []byte) (Counter, error) {
			if version != 1 {
				return Counter{}, fmt.Errorf("version %d", version)
			}
			var c Counter
			err := reg.Codec().Unmarshal(data, &c)
			c.Items = append(c.Items, "upcast")
			return c, err
		}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := up.Load(ctx, "sv-1")
	if err != nil || l.Snapshot != 3 || l.EventsRead != 1 || l.State.Total != 6 || !slices.Equal(l.State.Items, []string{"upcast"}) {
		t.Fatalf("v2 load with an upcaster: %+v, %v", l, err)
	}
	// A snapshot of a newer version (written by a newer deployment) is
	// ignored by the older one.
	if _, err := up.Snapshot(ctx, "sv-1"); err != nil {
		t.Fatal(err)
	}
	if l, err := v1.Load(ctx, "sv-1"); err != nil || l.Snapshot != 0 || l.State.Total != 6 || len(l.State.Items) != 0 {
		t.Fatalf("v1 load of a v2 snapshot: %+v, %v", l, err)
	}
}

// failingSnapshots is a store whose snapshot writes fail.
type failingSnapshots struct{ eventsource.Store }

func (failingSnapshots) SaveSnapshot(context.Context, eventsource.Snapshot) error {
	return errors.New("snapshot storage is down")
}

// testStaleSnapshot: a snapshot that does not match its stream is ignored;
// a failing snapshot write never fails a command.
func testStaleSnapshot(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	appendOK(t, ctx, s, "st-1", eventsource.NoStream, added(t, "a", 1), added(t, "a", 2))
	bogus, _ := reg.Codec().Marshal(Counter{Total: 1000})
	for _, snap := range []eventsource.Snapshot{
		{StreamID: "st-1", Version: 2, EventID: "not-the-event", SchemaVersion: 1, Data: bogus},
		{StreamID: "st-1", Version: 7, EventID: "ahead", SchemaVersion: 1, Data: bogus},
		{StreamID: "st-1", Version: 2, SchemaVersion: 1, Data: []byte("{garbage")},
		{StreamID: "st-none", Version: 1, EventID: "x", SchemaVersion: 1, Data: bogus},
	} {
		if err := s.SaveSnapshot(ctx, snap); err != nil {
			t.Fatal(err)
		}
		l, err := repo.Load(ctx, snap.StreamID)
		if err != nil || l.Snapshot != 0 || l.State.Total == 1000 {
			t.Fatalf("stale snapshot %+v was used: %+v, %v", snap, l, err)
		}
	}
	// Snapshot writes that fail leave commands succeeding.
	failing, err := eventsource.NewRepository(failingSnapshots{s}, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := failing.Handle(ctx, "st-3", Add{By: "a", N: 3}); err != nil || res.Version != 1 {
		t.Fatalf("handle with failing snapshots: %+v, %v", res, err)
	}
	// A snapshot written inside a transaction that rolled back refers to an
	// event that never committed: the stream's event at that version, once
	// written by someone else, has another ID.
	tx, _ := h.Begin(t, s)
	if _, err := repo.With(tx).Handle(ctx, "st-2", Add{By: "rolled-back", N: 500}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := s.LoadSnapshot(ctx, "st-2"); err != nil || !ok {
		t.Logf("the store kept no snapshot of the rolled-back transaction (%v)", err)
	}
	appendOK(t, ctx, s, "st-2", eventsource.NoStream, added(t, "real", 1))
	if l, err := repo.Load(ctx, "st-2"); err != nil || l.Snapshot != 0 || l.State.Total != 1 {
		t.Fatalf("snapshot of a rolled-back transaction: %+v, %v", l, err)
	}
}

// testTemporal: a stream as of a version or a point in time.
func testTemporal(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	repo, err := eventsource.NewRepository(s, newRegistry(), counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range 4 {
		e := added(t, "t", 1<<i)
		e.Time = t0.Add(time.Duration(i) * time.Hour)
		appendOK(t, ctx, s, "tm-1", eventsource.ExpectedVersion(i), e)
	}
	if _, err := repo.Snapshot(ctx, "tm-1"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		opts  eventsource.ReadOptions
		total int
	}{
		{eventsource.ReadOptions{AsOfVersion: 1}, 1},
		{eventsource.ReadOptions{AsOfVersion: 3}, 7},
		{eventsource.ReadOptions{AsOfTime: t0.Add(90 * time.Minute)}, 3},
		{eventsource.ReadOptions{AsOfTime: t0}, 1},
		{eventsource.ReadOptions{AsOfTime: t0.Add(-time.Second)}, 0},
		{eventsource.ReadOptions{AsOfTime: t0.Add(24 * time.Hour)}, 15},
	} {
		l, err := repo.LoadAsOf(ctx, "tm-1", tc.opts)
		if err != nil || l.State.Total != tc.total {
			t.Errorf("as of %+v: total %d (%v), want %d", tc.opts, l.State.Total, err, tc.total)
		}
		if tc.opts.AsOfVersion != 0 && l.Snapshot != 0 {
			t.Errorf("as of version %d used the snapshot at %d", tc.opts.AsOfVersion, l.Snapshot)
		}
	}
	recs := readStream(t, ctx, s, "tm-1", eventsource.ReadOptions{AsOfTime: t0.Add(2 * time.Hour), Backward: true})
	if got := versions(recs); !slices.Equal(got, []int64{3, 2, 1}) || !recs[0].Time.Equal(t0.Add(2*time.Hour)) {
		t.Fatalf("backward as of a time: %v", got)
	}
}
