package eventsourcetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
)

// testAppendAndRead: versions, positions, IDs and every read direction.
func testAppendAndRead(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	if _, err := collect(s.ReadStream(ctx, "order-1", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("read of a missing stream: %v, want ErrStreamNotFound", err)
	}
	evs := []eventsource.EventData{added(t, "a", 1), added(t, "a", 2), added(t, "a", 3)}
	evs[1].ID = "my-own-id"
	evs[0].Metadata = eventsource.Metadata{broker.HeaderCorrelationID: "corr-\"1\"\n", "k": "v"}
	evs[2].Time = time.Date(2023, 5, 6, 7, 8, 9, 123456000, time.UTC)
	res := appendOK(t, ctx, s, "order-1", eventsource.NoStream, evs...)
	if res.Version != 3 || len(res.Positions) != 3 || res.Duplicate || res.StreamID != "order-1" {
		t.Fatalf("append result %+v", res)
	}
	for i := 1; i < 3; i++ {
		if !res.Positions[i-1].Before(res.Positions[i]) || res.Positions[i].Transaction != res.Positions[0].Transaction {
			t.Fatalf("positions of one append: %v", res.Positions)
		}
	}
	if res.Position() != res.Positions[2] {
		t.Fatalf("Position() = %v, want the last", res.Position())
	}
	res2 := appendOK(t, ctx, s, "order-1", 3, added(t, "b", 4))
	if res2.Version != 4 || !res.Position().Before(res2.Position()) {
		t.Fatalf("second append %+v after %v", res2, res.Position())
	}

	recs := readStream(t, ctx, s, "order-1", eventsource.ReadOptions{})
	if got := versions(recs); !slices.Equal(got, []int64{1, 2, 3, 4}) {
		t.Fatalf("versions %v", got)
	}
	for i, r := range recs {
		if r.StreamID != "order-1" || r.Type != "counter.added" || r.SchemaVersion != 1 || r.ID == "" || r.Time.IsZero() {
			t.Fatalf("record %d: %+v", i, r)
		}
		want := append(slices.Clone(res.Positions), res2.Positions...)[i]
		if r.Position != want {
			t.Fatalf("record %d at %v, append said %v", i, r.Position, want)
		}
	}
	if recs[1].ID != "my-own-id" || string(recs[2].Data) != `{"by":"a","n":3}` {
		t.Fatalf("stored ID %q, data %s", recs[1].ID, recs[2].Data)
	}
	for _, tc := range []struct {
		opts eventsource.ReadOptions
		want []int64
	}{
		{eventsource.ReadOptions{From: 2}, []int64{2, 3, 4}},
		{eventsource.ReadOptions{From: 2, Limit: 2}, []int64{2, 3}},
		{eventsource.ReadOptions{Backward: true}, []int64{4, 3, 2, 1}},
		{eventsource.ReadOptions{Backward: true, From: 3, Limit: 2}, []int64{3, 2}},
		{eventsource.ReadOptions{Backward: true, Limit: 1}, []int64{4}},
		{eventsource.ReadOptions{From: 9}, nil},
		{eventsource.ReadOptions{AsOfVersion: 2}, []int64{1, 2}},
		{eventsource.ReadOptions{AsOfVersion: 3, Backward: true}, []int64{3, 2, 1}},
	} {
		if got := versions(readStream(t, ctx, s, "order-1", tc.opts)); !slices.Equal(got, tc.want) {
			t.Errorf("read %+v: versions %v, want %v", tc.opts, got, tc.want)
		}
	}
	// The global log returns the same records.
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != len(recs) {
		t.Fatalf("log holds %d events, the stream %d", len(log), len(recs))
	}
	for i := range recs {
		a, b := recs[i], log[i]
		if a.ID != b.ID || a.StreamID != b.StreamID || a.Version != b.Version || a.Position != b.Position || a.Type != b.Type ||
			a.SchemaVersion != b.SchemaVersion || string(a.Data) != string(b.Data) || !a.Time.Equal(b.Time) ||
			len(a.Metadata) != len(b.Metadata) || a.Metadata[broker.HeaderCorrelationID] != b.Metadata[broker.HeaderCorrelationID] {
			t.Fatalf("record %d differs between the stream and the log:\n%+v\n%+v", i, a, b)
		}
	}
	// A minimal read has what a load needs.
	for i, r := range readStream(t, ctx, s, "order-1", eventsource.ReadOptions{Minimal: true}) {
		if r.ID != recs[i].ID || r.Version != recs[i].Version || r.Type != recs[i].Type || string(r.Data) != string(recs[i].Data) {
			t.Fatalf("minimal read %d: %+v, want the fields of %+v", i, r, recs[i])
		}
	}
	// Stopping an iteration early is fine, and the store stays usable.
	for range s.ReadStream(ctx, "order-1", eventsource.ReadOptions{}) {
		break
	}
	appendOK(t, ctx, s, "order-1", 4, added(t, "c", 5))
}

// testExpectedVersion: every expectation, matched and conflicting; a
// conflict stores nothing and says what it expected and found.
func testExpectedVersion(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	conflict := func(stream string, exp eventsource.ExpectedVersion, actual int64) {
		t.Helper()
		_, err := s.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: exp, Events: []eventsource.EventData{added(t, "x", 1)}})
		if e := isConflict(err, stream, exp, actual); e != nil {
			t.Fatalf("append to %q expecting %v: %v", stream, exp, e)
		}
	}
	conflict("s-1", eventsource.StreamExists, 0)
	conflict("s-1", 1, 0)
	appendOK(t, ctx, s, "s-1", eventsource.NoStream, added(t, "a", 1))
	conflict("s-1", eventsource.NoStream, 1)
	conflict("s-1", 2, 1)
	appendOK(t, ctx, s, "s-1", 1, added(t, "a", 2))
	appendOK(t, ctx, s, "s-1", eventsource.StreamExists, added(t, "a", 3))
	appendOK(t, ctx, s, "s-1", eventsource.AnyVersion, added(t, "a", 4))
	appendOK(t, ctx, s, "s-2", eventsource.AnyVersion, added(t, "a", 5))
	conflict("s-1", 3, 4)
	if got := versions(readStream(t, ctx, s, "s-1", eventsource.ReadOptions{})); !slices.Equal(got, seq(1, 4)) {
		t.Fatalf("after conflicts: versions %v", got)
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != 5 {
		t.Fatalf("global log holds %d events, want 5", len(log))
	}
	// A conflict leaves a transaction usable.
	tx, _ := h.Begin(t, s)
	defer tx.Rollback(ctx)
	if _, err := tx.Append(ctx, eventsource.StreamAppend{StreamID: "s-1", Expected: 1, Events: []eventsource.EventData{added(t, "x", 1)}}); !errors.Is(err, eventsource.ErrConcurrency) {
		t.Fatalf("conflict in a transaction: %v", err)
	}
	appendOK(t, ctx, tx, "s-1", 4, added(t, "t", 6))
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := versions(readStream(t, ctx, s, "s-1", eventsource.ReadOptions{})); !slices.Equal(got, seq(1, 5)) {
		t.Fatalf("after the transaction: versions %v", got)
	}
}

// testMultiStreamAtomic: one append to several streams stores all or none.
func testMultiStreamAtomic(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	appendOK(t, ctx, s, "b-1", eventsource.NoStream, added(t, "a", 1))
	_, err := s.Append(ctx,
		eventsource.StreamAppend{StreamID: "a-1", Expected: eventsource.NoStream, Events: []eventsource.EventData{added(t, "m", 1)}},
		eventsource.StreamAppend{StreamID: "b-1", Expected: eventsource.NoStream, Events: []eventsource.EventData{added(t, "m", 2)}},
		eventsource.StreamAppend{StreamID: "c-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{added(t, "m", 3)}},
	)
	if e := isConflict(err, "b-1", eventsource.NoStream, 1); e != nil {
		t.Fatalf("multi-stream append with one bad expectation: %v", e)
	}
	for _, id := range []string{"a-1", "c-1"} {
		if _, err := collect(s.ReadStream(ctx, id, eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
			t.Fatalf("stream %q after a failed multi-stream append: %v", id, err)
		}
	}
	res, err := s.Append(ctx,
		eventsource.StreamAppend{StreamID: "c-1", Expected: eventsource.NoStream, Events: []eventsource.EventData{added(t, "m", 1), added(t, "m", 2)}},
		eventsource.StreamAppend{StreamID: "b-1", Expected: 1, Events: []eventsource.EventData{added(t, "m", 3)}},
		eventsource.StreamAppend{StreamID: "a-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{added(t, "m", 4)}},
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].StreamID != "c-1" || res[0].Version != 2 || res[1].StreamID != "b-1" || res[1].Version != 2 ||
		res[2].StreamID != "a-1" || res[2].Version != 1 {
		t.Fatalf("results %+v", res)
	}
	// One transaction, positions in argument order.
	var all []eventsource.Position
	for _, r := range res {
		all = append(all, r.Positions...)
	}
	for i := 1; i < len(all); i++ {
		if !all[i-1].Before(all[i]) || all[i].Transaction != all[0].Transaction {
			t.Fatalf("positions of a multi-stream append: %v", all)
		}
	}
	if eventsource.LastPosition(res) != all[len(all)-1] {
		t.Fatalf("LastPosition %v", eventsource.LastPosition(res))
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != 5 {
		t.Fatalf("log holds %d events, want 5", len(log))
	}
	checkLogOrder(t, log)
}

// testTransaction: appends in a transaction are invisible until it commits,
// gone if it rolls back, and a repository can run in it.
func testTransaction(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	repo, err := eventsource.NewRepository(s, newRegistry(), counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	tx, _ := h.Begin(t, s)
	appendOK(t, ctx, tx, "t-1", eventsource.NoStream, added(t, "a", 1))
	res, err := repo.With(tx).Handle(ctx, "t-1", Add{By: "b", N: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 || res.State.Total != 3 {
		t.Fatalf("in the transaction: %+v", res)
	}
	appendOK(t, ctx, tx, "t-2", eventsource.NoStream, added(t, "c", 3))
	if _, err := collect(s.ReadStream(ctx, "t-1", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("uncommitted stream read outside: %v", err)
	}
	if page, err := s.ReadLog(ctx, eventsource.LogQuery{}); err != nil || len(page.Records) != 0 {
		t.Fatalf("uncommitted events in the log: %v, %v", page.Records, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := repo.Load(ctx, "t-1")
	if err != nil || l.State.Total != 3 || l.Version != 2 {
		t.Fatalf("after commit: %+v, %v", l, err)
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != 3 || log[0].Position.Transaction != log[2].Position.Transaction {
		t.Fatalf("the transaction's events in the log: %+v", log)
	}

	tx2, _ := h.Begin(t, s)
	appendOK(t, ctx, tx2, "t-1", 2, added(t, "d", 4))
	appendOK(t, ctx, tx2, "t-3", eventsource.NoStream, added(t, "d", 5))
	if err := tx2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := versions(readStream(t, ctx, s, "t-1", eventsource.ReadOptions{})); !slices.Equal(got, []int64{1, 2}) {
		t.Fatalf("after rollback: %v", got)
	}
	if _, err := collect(s.ReadStream(ctx, "t-3", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("rolled back stream: %v", err)
	}
	appendOK(t, ctx, s, "t-3", eventsource.NoStream, added(t, "e", 6))
	appendOK(t, ctx, s, "t-1", 2, added(t, "e", 7))
}

// testConcurrentWriters: 20 writers append to one stream with expected
// versions. Exactly one wins each version, nothing is lost, and the state
// equals a sequential replay.
func testConcurrentWriters(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	const writers, each = 20, 10
	const stream = "counter-1"
	var mu sync.Mutex
	winners := map[int64]string{}
	var conflicts int
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			by := fmt.Sprintf("w%02d", w)
			for k := 1; k <= each; {
				var version int64
				for r, err := range s.ReadStream(ctx, stream, eventsource.ReadOptions{Backward: true, Limit: 1}) {
					if err != nil && !errors.Is(err, eventsource.ErrStreamNotFound) {
						errs <- err
						return
					}
					version = r.Version
				}
				res, err := s.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.ExpectedVersion(version),
					Events: []eventsource.EventData{added(t, by, k)}})
				if errors.Is(err, eventsource.ErrConcurrency) {
					mu.Lock()
					conflicts++
					mu.Unlock()
					continue
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", by, err)
					return
				}
				mu.Lock()
				if prev, ok := winners[res[0].Version]; ok {
					mu.Unlock()
					errs <- fmt.Errorf("version %d won by %s and %s", res[0].Version, prev, by)
					return
				}
				winners[res[0].Version] = by
				mu.Unlock()
				if res[0].Version != version+1 {
					errs <- fmt.Errorf("%s expected %d and got version %d", by, version, res[0].Version)
					return
				}
				k++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	recs := readStream(t, ctx, s, stream, eventsource.ReadOptions{})
	if got := versions(recs); !slices.Equal(got, seq(1, writers*each)) {
		t.Fatalf("stream versions %v, want 1..%d", got, writers*each)
	}
	next := map[string]int{}
	reg := newRegistry()
	state := counterDecider().Initial()
	for _, r := range recs {
		vs, err := reg.Decode(r)
		if err != nil {
			t.Fatal(err)
		}
		a := vs[0].(Added)
		if winners[r.Version] != a.By {
			t.Fatalf("version %d holds %s's event, the append answered %s", r.Version, a.By, winners[r.Version])
		}
		if next[a.By]+1 != a.N {
			t.Fatalf("writer %s: event %d after %d (lost or duplicated)", a.By, a.N, next[a.By])
		}
		next[a.By] = a.N
		state = evolveCounter(state, a)
	}
	t.Logf("%d appends, %d conflicts", writers*each, conflicts)
	// The same through repositories: the final state equals the replay.
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{MaxAttempts: 1000,
		Backoff: broker.Backoff{Initial: 1, Max: 2, Jitter: -1}})
	if err != nil {
		t.Fatal(err)
	}
	var wg2 sync.WaitGroup
	errs2 := make(chan error, writers)
	for w := range writers {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for k := 1; k <= each; k++ {
				if _, err := repo.Handle(ctx, "counter-2", Add{By: fmt.Sprintf("w%02d", w), N: k}); err != nil {
					errs2 <- err
					return
				}
			}
		}()
	}
	wg2.Wait()
	close(errs2)
	for err := range errs2 {
		t.Fatal(err)
	}
	l, err := repo.Load(ctx, "counter-2")
	if err != nil {
		t.Fatal(err)
	}
	wantTotal := writers * each * (each + 1) / 2
	if l.Version != writers*each || l.State.Total != wantTotal || l.State.Total != state.Total || len(l.State.Last) != writers {
		t.Fatalf("repository state %+v (version %d), want total %d over %d events", l.State, l.Version, wantTotal, writers*each)
	}
	for by, n := range l.State.Last {
		if n != each {
			t.Fatalf("writer %s ended at %d, want %d", by, n, each)
		}
	}
}

// testIdempotentRetry: an append retried after its commit succeeded
// returns the same positions and stores nothing; other reuses of an ID are
// refused.
func testIdempotentRetry(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	evs := []eventsource.EventData{added(t, "a", 1), added(t, "a", 2)}
	evs[0].ID, evs[1].ID = "evt-1", "evt-2"
	first := appendOK(t, ctx, s, "r-1", eventsource.NoStream, evs...)
	appendOK(t, ctx, s, "r-1", 2, added(t, "b", 3))
	for _, exp := range []eventsource.ExpectedVersion{eventsource.NoStream, eventsource.AnyVersion} {
		again := appendOK(t, ctx, s, "r-1", exp, evs...)
		if !again.Duplicate || again.Version != 2 || !slices.Equal(again.Positions, first.Positions) {
			t.Fatalf("retry (expected %v): %+v, want the first result %+v", exp, again, first)
		}
	}
	// Multi-stream retry.
	m := []eventsource.StreamAppend{
		{StreamID: "r-2", Expected: eventsource.NoStream, Events: []eventsource.EventData{{ID: "m-1", Type: "counter.added", SchemaVersion: 1}}},
		{StreamID: "r-3", Expected: eventsource.NoStream, Events: []eventsource.EventData{{ID: "m-2", Type: "counter.added", SchemaVersion: 1}}},
	}
	r1, err := s.Append(ctx, m...)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Append(ctx, m...)
	if err != nil || !r2[0].Duplicate || !r2[1].Duplicate || r2[1].Position() != r1[1].Position() {
		t.Fatalf("multi-stream retry: %+v, %v", r2, err)
	}
	refused := func(what string, a eventsource.StreamAppend) {
		t.Helper()
		if _, err := s.Append(ctx, a); !errors.Is(err, eventsource.ErrDuplicateEvent) {
			t.Fatalf("%s: %v, want ErrDuplicateEvent", what, err)
		}
	}
	refused("same IDs in another stream", eventsource.StreamAppend{StreamID: "r-9", Expected: eventsource.AnyVersion, Events: evs})
	refused("part of the events", eventsource.StreamAppend{StreamID: "r-1", Expected: eventsource.AnyVersion,
		Events: []eventsource.EventData{evs[0], {ID: "evt-new", Type: "counter.added", SchemaVersion: 1}}})
	refused("another order", eventsource.StreamAppend{StreamID: "r-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{evs[1], evs[0]}})
	refused("another expected version", eventsource.StreamAppend{StreamID: "r-1", Expected: 5, Events: evs})
	if got := versions(readStream(t, ctx, s, "r-1", eventsource.ReadOptions{})); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("after retries: versions %v", got)
	}
	if n := len(drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})); n != 5 {
		t.Fatalf("log holds %d events, want 5", n)
	}
	// A retry inside a transaction that already stored the events.
	tx, _ := h.Begin(t, s)
	defer tx.Rollback(ctx)
	e := []eventsource.EventData{{ID: "tx-1", Type: "counter.added", SchemaVersion: 1}}
	a := appendOK(t, ctx, tx, "r-4", eventsource.NoStream, e...)
	b := appendOK(t, ctx, tx, "r-4", eventsource.NoStream, e...)
	if !b.Duplicate || b.Position() != a.Position() {
		t.Fatalf("retry in a transaction: %+v after %+v", b, a)
	}
}

// testReordered: a transaction that appends to a stream after a
// transaction numbered later committed to it is refused, so the global log
// keeps every stream in version order.
func testReordered(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	early, _ := h.Begin(t, s)
	defer early.Rollback(ctx)
	appendOK(t, ctx, early, "other-1", eventsource.NoStream, added(t, "early", 1)) // numbers early
	late, _ := h.Begin(t, s)
	appendOK(t, ctx, late, "x-1", eventsource.NoStream, added(t, "late", 1))
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := early.Append(ctx, eventsource.StreamAppend{StreamID: "x-1", Expected: eventsource.AnyVersion,
		Events: []eventsource.EventData{added(t, "early", 2)}})
	var ce *eventsource.ConcurrencyError
	if !errors.As(err, &ce) || ce.Reason != "reordered" || ce.Actual != 1 {
		t.Fatalf("append of an earlier transaction after a later one: %v, want a reordered conflict", err)
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	checkLogOrder(t, log)
	if len(log) != 2 {
		t.Fatalf("log %+v", log)
	}
	// A fresh transaction appends fine.
	appendOK(t, ctx, s, "x-1", eventsource.AnyVersion, added(t, "retry", 2))
}
