package eventsourcetest

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventsource"
)

// The suite's domain: a counter that writers add to, and an item event with
// three schema versions for upcasting.

// Added is the counter's event.
type Added struct {
	By string `json:"by"`
	N  int    `json:"n"`
}

// Add is the counter's command. A negative N is refused.
type Add struct {
	By string
	N  int
}

// Counter is the counter's state.
type Counter struct {
	Total  int            `json:"total"`
	Events int            `json:"events"`
	Last   map[string]int `json:"last"` // per writer: the last N added
	Items  []string       `json:"items"`
}

// ItemV1 is "item.added" version 1: a name.
type ItemV1 struct {
	Name string `json:"name"`
}

// ItemV2 is version 2: a quantity was added (1 for older events).
type ItemV2 struct {
	Name string `json:"name"`
	Qty  int    `json:"qty"`
}

// ItemV3 is version 3, the current one: the name became a title.
type ItemV3 struct {
	Title string `json:"title"`
	Qty   int    `json:"qty"`
}

var errNegative = errors.New("negative amounts are refused")

func counterDecider() eventsource.Decider[Counter, Add, any] {
	return eventsource.Decider[Counter, Add, any]{
		Initial: func() Counter { return Counter{Last: map[string]int{}} },
		Decide: func(s Counter, c Add) ([]any, error) {
			if c.N < 0 {
				return nil, errNegative
			}
			return []any{Added(c)}, nil
		},
		Evolve: evolveCounter,
	}
}

func evolveCounter(s Counter, e any) Counter {
	last := make(map[string]int, len(s.Last)+1)
	for k, v := range s.Last {
		last[k] = v
	}
	s.Last = last
	switch e := e.(type) {
	case Added:
		s.Total += e.N
		s.Last[e.By] = e.N
	case ItemV3:
		s.Items = append(slices.Clip(s.Items), fmt.Sprintf("%s x%d", e.Title, e.Qty))
	}
	s.Events++
	return s
}

// newRegistry registers the suite's event types and upcasters.
func newRegistry() *eventsource.Registry {
	r := eventsource.NewRegistry()
	eventsource.Register[Added](r, "counter.added", 1)
	eventsource.Register[ItemV1](r, "item.added", 1)
	eventsource.Register[ItemV2](r, "item.added", 2)
	eventsource.Register[ItemV3](r, "item.added", 3)
	eventsource.Upcast(r, func(v ItemV1) ItemV2 { return ItemV2{Name: v.Name, Qty: 1} })
	eventsource.Upcast(r, func(v ItemV2) ItemV3 { return ItemV3{Title: strings.ToUpper(v.Name), Qty: v.Qty} })
	return r
}

// added encodes an Added event.
func added(t testing.TB, by string, n int) eventsource.EventData {
	t.Helper()
	d, err := newRegistry().Encode(context.Background(), Added{By: by, N: n})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// raw returns an event with a type, version and payload of its own.
func raw(typ string, version int, data string) eventsource.EventData {
	return eventsource.EventData{Type: typ, SchemaVersion: version, Data: []byte(data)}
}

func appendOK(t testing.TB, ctx context.Context, s eventsource.Appender, stream string, exp eventsource.ExpectedVersion, events ...eventsource.EventData) eventsource.AppendResult {
	t.Helper()
	res, err := s.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: exp, Events: events})
	if err != nil {
		t.Fatalf("append to %q (expected %v): %v", stream, exp, err)
	}
	if len(res) != 1 {
		t.Fatalf("append to %q: %d results, want 1", stream, len(res))
	}
	return res[0]
}

// collect gathers a stream read.
func collect(seq iter.Seq2[eventsource.Record, error]) ([]eventsource.Record, error) {
	var out []eventsource.Record
	for r, err := range seq {
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

func readStream(t testing.TB, ctx context.Context, s eventsource.StreamReader, stream string, opts eventsource.ReadOptions) []eventsource.Record {
	t.Helper()
	recs, err := collect(s.ReadStream(ctx, stream, opts))
	if err != nil {
		t.Fatalf("read %q: %v", stream, err)
	}
	return recs
}

func versions(recs []eventsource.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.Version
	}
	return out
}

func seq(from, to int64) []int64 {
	var out []int64
	for v := from; v <= to; v++ {
		out = append(out, v)
	}
	return out
}

// drainLog reads the whole log after from, waiting until no open
// transaction holds it back and a read comes back empty.
func drainLog(t testing.TB, ctx context.Context, s eventsource.LogReader, from eventsource.Position, filter eventsource.Filter) []eventsource.Record {
	t.Helper()
	var out []eventsource.Record
	pos := from
	for {
		page, err := s.ReadLog(ctx, eventsource.LogQuery{After: pos, Limit: 333, Filter: filter})
		if err != nil {
			t.Fatalf("read log after %v: %v", pos, err)
		}
		if page.Next.Before(pos) {
			t.Fatalf("read log after %v: next %v moved backwards", pos, page.Next)
		}
		out = append(out, page.Records...)
		pos = page.Next
		if len(page.Records) == 0 && !page.HeldBack {
			return out
		}
		if len(page.Records) == 0 {
			select {
			case <-ctx.Done():
				t.Fatalf("read log: still held back at fence %d: %v", page.Fence, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// checkLogOrder fails unless recs are in strictly increasing position
// order and each stream's events in consecutive version order.
func checkLogOrder(t testing.TB, recs []eventsource.Record) {
	t.Helper()
	last := map[string]int64{}
	for i, r := range recs {
		if i > 0 && !recs[i-1].Position.Before(r.Position) {
			t.Fatalf("log out of order at %d: %v then %v", i, recs[i-1].Position, r.Position)
		}
		if v, ok := last[r.StreamID]; ok && r.Version != v+1 {
			t.Fatalf("stream %q out of order in the log: version %d after %d", r.StreamID, r.Version, v)
		}
		last[r.StreamID] = r.Version
	}
}

func waitFor(t testing.TB, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func isConflict(err error, stream string, exp eventsource.ExpectedVersion, actual int64) error {
	var ce *eventsource.ConcurrencyError
	if !errors.As(err, &ce) || !errors.Is(err, eventsource.ErrConcurrency) {
		return fmt.Errorf("got %v, want a *ConcurrencyError", err)
	}
	if ce.StreamID != stream || ce.Expected != exp || ce.Actual != actual {
		return fmt.Errorf("got conflict {stream %q, expected %v, actual %d}, want {%q, %v, %d}",
			ce.StreamID, ce.Expected, ce.Actual, stream, exp, actual)
	}
	return nil
}

// readUntil reads with r from after until its checkpoint reaches until,
// and returns everything read as one batch. Another transaction on the
// server (the suite's own, or any other) may hold the log back for a while:
// it waits.
func readUntil(t testing.TB, ctx context.Context, r *eventsource.Reader, after, until eventsource.Position) eventsource.Batch {
	t.Helper()
	all := eventsource.Batch{Checkpoint: after}
	for all.Checkpoint.Before(until) {
		b, err := r.Read(ctx, all.Checkpoint)
		if err != nil {
			t.Fatalf("read after %v: %v", all.Checkpoint, err)
		}
		all.Events = append(all.Events, b.Events...)
		all.Skipped = append(all.Skipped, b.Skipped...)
		if b.Checkpoint == all.Checkpoint {
			select {
			case <-ctx.Done():
				t.Fatalf("read: the checkpoint stays at %v, before %v: %v", b.Checkpoint, until, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
		all.Checkpoint = b.Checkpoint
	}
	return all
}

// readLogUntil reads the log after after until a page holds at least n
// records (waiting while something holds the log back).
func readLogUntil(t testing.TB, ctx context.Context, s eventsource.LogReader, q eventsource.LogQuery, n int) eventsource.Page {
	t.Helper()
	for {
		page, err := s.ReadLog(ctx, q)
		if err != nil {
			t.Fatalf("read log after %v: %v", q.After, err)
		}
		if len(page.Records) >= n {
			return page
		}
		select {
		case <-ctx.Done():
			t.Fatalf("read log after %v: %d records, want %d: %v", q.After, len(page.Records), n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pause waits a moment before a case reads again.
func pause(t testing.TB, ctx context.Context) {
	t.Helper()
	select {
	case <-ctx.Done():
		t.Fatalf("timed out: %v", ctx.Err())
	case <-time.After(5 * time.Millisecond):
	}
}
