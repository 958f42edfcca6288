package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func tracerOf(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return otel.GetTracerProvider()
	}
	return tp
}

// Spans keeps every span that ended, to print a trace as a tree: a tiny
// exporter for the example (in a service, use an OTLP exporter).
type Spans struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

var _ sdktrace.SpanProcessor = (*Spans)(nil)

// NewTracing returns an SDK tracer provider that records into a Spans.
func NewTracing() (*sdktrace.TracerProvider, *Spans) {
	s := &Spans{}
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s), sdktrace.WithSampler(sdktrace.AlwaysSample())), s
}

func (s *Spans) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s *Spans) OnEnd(sp sdktrace.ReadOnlySpan) {
	s.mu.Lock()
	s.spans = append(s.spans, sp)
	s.mu.Unlock()
}
func (s *Spans) Shutdown(context.Context) error   { return nil }
func (s *Spans) ForceFlush(context.Context) error { return nil }

// Trace returns the ended spans of trace id, by start time.
func (s *Spans) Trace(id trace.TraceID) []sdktrace.ReadOnlySpan {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []sdktrace.ReadOnlySpan
	for _, sp := range s.spans {
		if sp.SpanContext().TraceID() == id {
			out = append(out, sp)
		}
	}
	slices.SortStableFunc(out, func(a, b sdktrace.ReadOnlySpan) int { return a.StartTime().Compare(b.StartTime()) })
	return out
}

// Find returns the first ended span named name, by start time, for which
// match (nil: any) holds.
func (s *Spans) Find(name string, match func(sdktrace.ReadOnlySpan) bool) (sdktrace.ReadOnlySpan, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range s.spans {
		if sp.Name() == name && (match == nil || match(sp)) {
			return sp, true
		}
	}
	return nil, false
}

// Print writes the trace as an indented tree: span name, kind, and start
// offset from the root.
func (s *Spans) Print(w io.Writer, id trace.TraceID) {
	spans := s.Trace(id)
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	known := map[trace.SpanID]bool{}
	for _, sp := range spans {
		known[sp.SpanContext().SpanID()] = true
	}
	var roots []sdktrace.ReadOnlySpan
	for _, sp := range spans {
		if p := sp.Parent().SpanID(); p.IsValid() && known[p] {
			children[p] = append(children[p], sp)
		} else {
			roots = append(roots, sp)
		}
	}
	if len(roots) == 0 {
		return
	}
	t0 := roots[0].StartTime()
	var walk func(sp sdktrace.ReadOnlySpan, depth int)
	walk = func(sp sdktrace.ReadOnlySpan, depth int) {
		fmt.Fprintf(w, "%s%s (%s, +%v)\n", strings.Repeat("  ", depth), sp.Name(), sp.SpanKind(),
			sp.StartTime().Sub(t0).Round(time.Millisecond))
		for _, c := range children[sp.SpanContext().SpanID()] {
			walk(c, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
}
