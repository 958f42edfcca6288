package eventsourcetest

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
)

// testTombstone: a deleted stream refuses reads and appends, its snapshot
// is dropped, and readers of the global log get the tombstone.
func testTombstone(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := repo.Handle(ctx, "del-1", Add{By: "a", N: i}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.DeleteStream(ctx, "del-1", 1); isConflict(err, "del-1", 1, 2) != nil {
		t.Fatalf("delete expecting the wrong version: %v", err)
	}
	tomb, err := s.DeleteStream(ctx, "del-1", 2)
	if err != nil || tomb.Version != 3 || len(tomb.Positions) != 1 {
		t.Fatalf("delete: %+v, %v", tomb, err)
	}
	if _, err := collect(s.ReadStream(ctx, "del-1", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("read of a deleted stream: %v", err)
	}
	if _, err := repo.Load(ctx, "del-1"); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("load of a deleted stream: %v", err)
	}
	if _, err := repo.Handle(ctx, "del-1", Add{N: 1}); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("handle on a deleted stream: %v", err)
	}
	if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: "del-1", Expected: eventsource.AnyVersion,
		Events: []eventsource.EventData{added(t, "x", 1)}}); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("append to a deleted stream: %v", err)
	}
	if _, err := s.DeleteStream(ctx, "del-1", eventsource.AnyVersion); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("delete twice: %v", err)
	}
	if _, ok, err := s.LoadSnapshot(ctx, "del-1"); ok || err != nil {
		t.Fatalf("snapshot of a deleted stream: %v, %v", ok, err)
	}
	if _, err := s.DeleteStream(ctx, "del-missing", eventsource.AnyVersion); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("delete a missing stream: %v", err)
	}
	if _, err := s.DeleteStream(ctx, "del-missing", eventsource.NoStream); !errors.Is(err, eventsource.ErrInvalidEvent) {
		t.Fatalf("delete expecting no stream: %v", err)
	}
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	b := readUntil(t, ctx, r, eventsource.Position{}, tomb.Position())
	if len(b.Events) != 3 {
		t.Fatalf("log: %+v", b)
	}
	if e := b.Events[2]; e.Event != (eventsource.StreamDeleted{}) || e.Type != eventsource.TypeStreamDeleted || e.Position != tomb.Position() {
		t.Fatalf("tombstone in the log: %+v", e)
	}
	// Other streams are untouched.
	appendOK(t, ctx, s, "del-2", eventsource.NoStream, added(t, "b", 1))
}

// testTruncate: events before a version are removed from the stream and
// the log; a load then needs a snapshot covering them.
func testTruncate(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	snapping, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1000)})
	if err != nil {
		t.Fatal(err)
	}
	plain, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		appendOK(t, ctx, s, "tr-1", eventsource.ExpectedVersion(i), added(t, "a", i+1))
	}
	if _, err := snapping.Snapshot(ctx, "tr-1"); err != nil {
		t.Fatal(err)
	}
	for i := 6; i < 10; i++ {
		appendOK(t, ctx, s, "tr-1", eventsource.ExpectedVersion(i), added(t, "a", i+1))
	}
	other := appendOK(t, ctx, s, "tr-2", eventsource.NoStream, added(t, "b", 1))
	n, err := s.TruncateStream(ctx, "tr-1", 6)
	if err != nil || n != 5 {
		t.Fatalf("truncate: %d, %v; want 5 removed", n, err)
	}
	if got := versions(readStream(t, ctx, s, "tr-1", eventsource.ReadOptions{})); !slices.Equal(got, seq(6, 10)) {
		t.Fatalf("after truncate: %v", got)
	}
	l, err := snapping.Load(ctx, "tr-1")
	if err != nil || l.Snapshot != 6 || l.State.Total != 55 || l.Version != 10 {
		t.Fatalf("load with a snapshot after truncate: %+v, %v", l, err)
	}
	if _, err := plain.Load(ctx, "tr-1"); !errors.Is(err, eventsource.ErrTruncated) {
		t.Fatalf("load without a snapshot after truncate: %v", err)
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != 6 || log[0].Version != 6 || log[5].Position != other.Position() {
		t.Fatalf("log after truncate: %d events", len(log))
	}
	appendOK(t, ctx, s, "tr-1", 10, added(t, "a", 11))
	if n, err := s.TruncateStream(ctx, "tr-1", 3); err != nil || n != 0 {
		t.Fatalf("truncate again below the first version: %d, %v", n, err)
	}
	// The last event is always kept: appends check their expectation
	// against it.
	if n, err := s.TruncateStream(ctx, "tr-1", 100); err != nil || n != 5 {
		t.Fatalf("truncate past the end: %d, %v; want 5 removed", n, err)
	}
	if got := versions(readStream(t, ctx, s, "tr-1", eventsource.ReadOptions{})); !slices.Equal(got, []int64{11}) {
		t.Fatalf("after truncating past the end: %v", got)
	}
	appendOK(t, ctx, s, "tr-1", 11, added(t, "a", 12))
	if _, err := s.TruncateStream(ctx, "tr-missing", 3); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("truncate a missing stream: %v", err)
	}
}

// testArchive: an archived stream reads as before, refuses appends, and
// has left the global log.
func testArchive(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	appendOK(t, ctx, s, "ar-1", eventsource.NoStream, added(t, "a", 1), added(t, "a", 2), added(t, "a", 3))
	keep := appendOK(t, ctx, s, "ar-2", eventsource.NoStream, added(t, "b", 1))
	if err := s.ArchiveStream(ctx, "ar-1"); err != nil {
		t.Fatal(err)
	}
	if got := versions(readStream(t, ctx, s, "ar-1", eventsource.ReadOptions{})); !slices.Equal(got, seq(1, 3)) {
		t.Fatalf("archived stream: %v", got)
	}
	if got := versions(readStream(t, ctx, s, "ar-1", eventsource.ReadOptions{Backward: true, Limit: 2})); !slices.Equal(got, []int64{3, 2}) {
		t.Fatalf("archived stream backwards: %v", got)
	}
	if l, err := repo.Load(ctx, "ar-1"); err != nil || l.State.Total != 6 {
		t.Fatalf("load archived: %+v, %v", l, err)
	}
	if _, err := repo.Handle(ctx, "ar-1", Add{N: 1}); !errors.Is(err, eventsource.ErrStreamArchived) {
		t.Fatalf("handle on an archived stream: %v", err)
	}
	log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{})
	if len(log) != 2 || log[0].Position != keep.Position() || log[1].Type != eventsource.TypeStreamArchived ||
		log[1].StreamID != "ar-1" || log[1].Version != 4 {
		t.Fatalf("log after archive: %+v", log)
	}
	if err := s.ArchiveStream(ctx, "ar-1"); err != nil {
		t.Fatalf("archive twice: %v", err)
	}
	if err := s.ArchiveStream(ctx, "ar-missing"); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("archive a missing stream: %v", err)
	}
}

// testShredding: after ShredStream a stream's payloads are gone for good;
// metadata and positions remain; loads and appends are refused; readers
// get a placeholder.
func testShredding(t *testing.T, h *Harness) {
	if !h.Features.Shredding {
		t.Skip("the store does not offer crypto-shredding (Features.Shredding)")
	}
	ctx := h.ctx(t)
	s := h.New(t)
	shredder, ok := s.(eventsource.Shredder)
	if !ok {
		t.Fatal("Features.Shredding is set but the store is no eventsource.Shredder")
	}
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{Snapshot: eventsource.Every(1)})
	if err != nil {
		t.Fatal(err)
	}
	ctxMD := eventsource.WithMetadata(ctx, eventsource.Metadata{broker.HeaderCorrelationID: "corr-1"})
	for i := range 2 {
		if _, err := repo.Handle(ctxMD, "user-1", Add{By: "secret-name", N: i + 1}); err != nil {
			t.Fatal(err)
		}
	}
	kept, err := repo.Handle(ctx, "user-2", Add{By: "kept", N: 7})
	if err != nil {
		t.Fatal(err)
	}
	before := readStream(t, ctx, s, "user-1", eventsource.ReadOptions{})
	if !strings.Contains(string(before[0].Data), "secret-name") {
		t.Fatalf("payload before shredding: %q", before[0].Data)
	}
	if err := shredder.ShredStream(ctx, "user-1"); err != nil {
		t.Fatal(err)
	}
	after := readStream(t, ctx, s, "user-1", eventsource.ReadOptions{})
	if len(after) != 2 {
		t.Fatalf("shredded stream has %d events, want 2", len(after))
	}
	for i, r := range after {
		if !r.Shredded || r.Data != nil || r.Type != "counter.added" || r.Metadata.CorrelationID() != "corr-1" ||
			r.Position != before[i].Position || r.ID != before[i].ID {
			t.Fatalf("shredded record %d: %+v", i, r)
		}
	}
	if _, ok, err := s.LoadSnapshot(ctx, "user-1"); ok || err != nil {
		t.Fatalf("snapshot of a shredded stream: %v, %v", ok, err)
	}
	if _, err := repo.Load(ctx, "user-1"); !errors.Is(err, eventsource.ErrShredded) {
		t.Fatalf("load of a shredded stream: %v", err)
	}
	if _, err := repo.Handle(ctx, "user-1", Add{N: 1}); !errors.Is(err, eventsource.ErrShredded) {
		t.Fatalf("handle on a shredded stream: %v", err)
	}
	r, err := eventsource.NewReader(s, reg, eventsource.ReaderConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var b eventsource.Batch
	waitFor(t, ctx, "the shred marker in the log", func() bool {
		b = readUntil(t, ctx, r, eventsource.Position{}, kept.Position())
		return len(b.Events) == 4
	})
	for _, e := range b.Events[:2] {
		if e.Event != (eventsource.Shredded{Type: "counter.added", SchemaVersion: 1}) {
			t.Fatalf("shredded event in the log: %+v", e)
		}
	}
	if m := b.Events[3]; m.Event != (eventsource.StreamShredded{}) || m.StreamID != "user-1" || m.Version != 3 {
		t.Fatalf("the shred marker in the log: %+v", m)
	}
	if l, err := repo.Load(ctx, "user-2"); err != nil || l.State.Total != 7 {
		t.Fatalf("other stream after shredding: %+v, %v", l, err)
	}
	if err := shredder.ShredStream(ctx, "user-1"); err != nil {
		t.Fatalf("shred twice: %v", err)
	}
	// Shredding a stream that has no events reserves its ID.
	if err := shredder.ShredStream(ctx, "user-3"); err != nil {
		t.Fatal(err)
	}
	if _, err := collect(s.ReadStream(ctx, "user-3", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamNotFound) {
		t.Fatalf("read of a shredded stream without events: %v", err)
	}
	if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: "user-3", Expected: eventsource.NoStream,
		Events: []eventsource.EventData{added(t, "x", 1)}}); !errors.Is(err, eventsource.ErrShredded) {
		t.Fatalf("append to a shredded stream without events: %v", err)
	}
	// A deleted stream can be shredded too, and stays deleted.
	appendOK(t, ctx, s, "user-4", eventsource.NoStream, added(t, "gone", 1))
	if _, err := s.DeleteStream(ctx, "user-4", 1); err != nil {
		t.Fatal(err)
	}
	if err := shredder.ShredStream(ctx, "user-4"); err != nil {
		t.Fatalf("shred a deleted stream: %v", err)
	}
	if _, err := collect(s.ReadStream(ctx, "user-4", eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrStreamDeleted) {
		t.Fatalf("read of a deleted, shredded stream: %v", err)
	}
	for _, rec := range drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{StreamPrefixes: []string{"user-4"}}) {
		if rec.Type == "counter.added" && (!rec.Shredded || rec.Data != nil) {
			t.Fatalf("the deleted stream's event after shredding: %+v", rec)
		}
	}
}

// testBadInput: malformed appends and reads get clear errors and store
// nothing; an undecodable payload is refused on load and kept.
func testBadInput(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	ok := added(t, "a", 1)
	long := strings.Repeat("x", eventsource.MaxStreamIDBytes+1)
	for _, id := range []string{"", "a\x00b", "a\nb", "\xff\xfe", long} {
		if _, err := s.Append(ctx, eventsource.StreamAppend{StreamID: id, Expected: eventsource.AnyVersion,
			Events: []eventsource.EventData{ok}}); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("append to stream %q: %v, want ErrInvalidStreamID", id, err)
		}
		if _, err := collect(s.ReadStream(ctx, id, eventsource.ReadOptions{})); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("read stream %q: %v", id, err)
		}
		if _, _, err := s.LoadSnapshot(ctx, id); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("load snapshot %q: %v", id, err)
		}
		if _, err := s.DeleteStream(ctx, id, eventsource.AnyVersion); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("delete %q: %v", id, err)
		}
		if _, err := s.TruncateStream(ctx, id, 2); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("truncate %q: %v", id, err)
		}
		if err := s.ArchiveStream(ctx, id); !errors.Is(err, eventsource.ErrInvalidStreamID) {
			t.Errorf("archive %q: %v", id, err)
		}
	}
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.Handle(ctx, "", Add{N: 1}); !errors.Is(err, eventsource.ErrInvalidStreamID) {
		t.Errorf("handle on an empty stream ID: %v", err)
	}
	if _, err := repo.Handle(ctx, "bad-1", Add{N: -1}); !errors.Is(err, errNegative) {
		t.Errorf("a refused command: %v", err)
	}
	bad := func(name string, mutate func(*eventsource.EventData)) eventsource.StreamAppend {
		e := ok
		e.Metadata = eventsource.Metadata{}
		mutate(&e)
		return eventsource.StreamAppend{StreamID: "bad-" + name, Expected: eventsource.AnyVersion, Events: []eventsource.EventData{e}}
	}
	for name, a := range map[string]eventsource.StreamAppend{
		"empty type":     bad("type", func(e *eventsource.EventData) { e.Type = "" }),
		"long type":      bad("long", func(e *eventsource.EventData) { e.Type = strings.Repeat("t", 300) }),
		"control type":   bad("ctl", func(e *eventsource.EventData) { e.Type = "a\tb" }),
		"version 0":      bad("v0", func(e *eventsource.EventData) { e.SchemaVersion = 0 }),
		"NUL in ID":      bad("id", func(e *eventsource.EventData) { e.ID = "a\x00" }),
		"NUL metadata":   bad("md", func(e *eventsource.EventData) { e.Metadata["k"] = "v\x00" }),
		"empty md key":   bad("mdk", func(e *eventsource.EventData) { e.Metadata[""] = "v" }),
		"bad UTF-8 md":   bad("mdu", func(e *eventsource.EventData) { e.Metadata["k"] = "\xff" }),
		"no events":      {StreamID: "bad-none", Expected: eventsource.AnyVersion},
		"bad expected":   {StreamID: "bad-exp", Expected: -7, Events: []eventsource.EventData{ok}},
		"duplicate ID":   {StreamID: "bad-dup", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{{ID: "d", Type: "t", SchemaVersion: 1}, {ID: "d", Type: "t", SchemaVersion: 1}}},
		"long event ID":  bad("lid", func(e *eventsource.EventData) { e.ID = strings.Repeat("i", 300) }),
		"bad UTF-8 type": bad("utf", func(e *eventsource.EventData) { e.Type = "\xc3\x28" }),
	} {
		if _, err := s.Append(ctx, a); !errors.Is(err, eventsource.ErrInvalidEvent) {
			t.Errorf("%s: %v, want ErrInvalidEvent", name, err)
		}
	}
	if _, err := s.Append(ctx); !errors.Is(err, eventsource.ErrInvalidEvent) {
		t.Errorf("append of nothing: %v", err)
	}
	// One bad stream of several refuses the whole append.
	if _, err := s.Append(ctx,
		eventsource.StreamAppend{StreamID: "good-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{ok}},
		eventsource.StreamAppend{StreamID: "good-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{ok}},
	); !errors.Is(err, eventsource.ErrInvalidEvent) {
		t.Errorf("one stream twice: %v", err)
	}
	if _, err := s.Append(ctx,
		eventsource.StreamAppend{StreamID: "good-1", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{ok}},
		eventsource.StreamAppend{StreamID: "", Expected: eventsource.AnyVersion, Events: []eventsource.EventData{ok}},
	); !errors.Is(err, eventsource.ErrInvalidStreamID) {
		t.Errorf("one bad stream ID of two: %v", err)
	}
	if log := drainLog(t, ctx, s, eventsource.Position{}, eventsource.Filter{}); len(log) != 0 {
		t.Fatalf("bad input stored %d events: %+v", len(log), log)
	}
	// Data that is not the registered type's JSON is stored (the store does
	// not decode) and refused, clearly, on load; nothing is lost.
	appendOK(t, ctx, s, "garbage-1", eventsource.NoStream, raw("counter.added", 1, `{"n":"not a number"}`))
	_, err = repo.Load(ctx, "garbage-1")
	var de *eventsource.DecodeError
	if !errors.As(err, &de) || de.Type != "counter.added" || de.StreamID != "garbage-1" || de.Version != 1 {
		t.Fatalf("load of an undecodable payload: %v", err)
	}
	recs := readStream(t, ctx, s, "garbage-1", eventsource.ReadOptions{})
	if len(recs) != 1 || string(recs[0].Data) != `{"n":"not a number"}` {
		t.Fatalf("the undecodable event was not kept as written: %+v", recs)
	}
	// Payloads and metadata are stored byte for byte, whatever they hold.
	hostile := eventsource.EventData{Type: "counter.added", SchemaVersion: 1, Data: []byte{0, 0xff, '\'', '"', '\\', 0},
		Metadata: eventsource.Metadata{"q'uote": `"; DROP TABLE x; --`, "emoji": "🙂"}}
	appendOK(t, ctx, s, "hostile-'; DROP TABLE events; --", eventsource.NoStream, hostile)
	got := readStream(t, ctx, s, "hostile-'; DROP TABLE events; --", eventsource.ReadOptions{})
	if len(got) != 1 || string(got[0].Data) != string(hostile.Data) || got[0].Metadata["q'uote"] != hostile.Metadata["q'uote"] ||
		got[0].Metadata["emoji"] != "🙂" {
		t.Fatalf("hostile event round trip: %+v", got)
	}
}

// testMetadata: correlation, causation and trace context travel from the
// context into the stored event and from there into a broker message.
func testMetadata(t *testing.T, h *Harness) {
	ctx := h.ctx(t)
	s := h.New(t)
	reg := newRegistry()
	repo, err := eventsource.NewRepository(s, reg, counterDecider(), eventsource.RepositoryConfig[Counter]{})
	if err != nil {
		t.Fatal(err)
	}
	cmd := broker.Message{ID: "msg-7", Headers: map[string]string{broker.HeaderCorrelationID: "conv-1"}}
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx2 := trace.ContextWithSpanContext(eventsource.CausedBy(ctx, cmd),
		trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	ctx2 = eventsource.WithMetadata(ctx2, eventsource.Metadata{"tenant": "acme"})
	res, err := repo.Handle(ctx2, "md-1", Add{By: "a", N: 1})
	if err != nil {
		t.Fatal(err)
	}
	recs := readStream(t, ctx, s, "md-1", eventsource.ReadOptions{})
	md := recs[0].Metadata
	if md.CorrelationID() != "conv-1" || md.CausationID() != "msg-7" || md["tenant"] != "acme" ||
		md[broker.HeaderTraceparent] != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" {
		t.Fatalf("stored metadata %v", md)
	}
	m := eventsource.ToMessage("orders", recs[0])
	if m.ID != recs[0].ID || m.Key != "md-1" || m.Topic != "orders" || m.Header(broker.HeaderType) != "counter.added" ||
		m.Header(broker.HeaderCorrelationID) != "conv-1" || m.Header(eventsource.HeaderPosition) != res.Position().String() {
		t.Fatalf("message %+v", m)
	}
	back, err := eventsource.FromMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != recs[0].ID || back.StreamID != "md-1" || back.Version != 1 || back.Position != recs[0].Position ||
		back.Type != recs[0].Type || back.SchemaVersion != 1 || back.Metadata["tenant"] != "acme" || string(back.Data) != string(recs[0].Data) {
		t.Fatalf("FromMessage: %+v, want %+v", back, recs[0])
	}
	// Causation chains through events.
	next := eventsource.CausedByEvent(ctx, recs[0])
	if got := eventsource.MetadataFrom(next); got.CorrelationID() != "conv-1" || got.CausationID() != recs[0].ID {
		t.Fatalf("CausedByEvent: %v", got)
	}
	m.Headers[eventsource.HeaderStreamVersion] = "x"
	if _, err := eventsource.FromMessage(m); !errors.Is(err, eventsource.ErrInvalidEvent) {
		t.Fatalf("FromMessage of a malformed header: %v", err)
	}
}
