package testenv

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ClosedAddr returns a loopback host:port nothing listens on, for tests of
// unreachable servers.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// LogRecorder is a slog.Handler that keeps every record, for tests that
// check what was logged (use it with slog.New). It is safe for concurrent
// use; attributes and groups added with With are dropped.
type LogRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *LogRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *LogRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}

func (r *LogRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *LogRecorder) WithGroup(string) slog.Handler      { return r }

// Records returns the records logged so far.
func (r *LogRecorder) Records() []slog.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]slog.Record(nil), r.recs...)
}

// Deliveries counts the deliveries of a consume benchmark and reports the
// rate from the first delivery on, so joining a group or declaring queues
// is left out. It is safe for concurrent use by handlers.
type Deliveries struct {
	n, first atomic.Int64 // count; UnixNano of the first delivery
	want     int64
	all      chan struct{}
}

// NewDeliveries returns a counter that is done after want deliveries.
func NewDeliveries(want int) *Deliveries {
	return &Deliveries{want: int64(want), all: make(chan struct{})}
}

// Add counts one delivery and returns the count so far.
func (d *Deliveries) Add() int64 {
	n := d.n.Add(1)
	if n == 1 {
		d.first.Store(time.Now().UnixNano())
	}
	if n == d.want {
		close(d.all)
	}
	return n
}

// Report waits for the wanted deliveries and reports msgs/s on b: the
// deliveries after the first, over the time since it.
func (d *Deliveries) Report(b *testing.B) {
	<-d.all
	for d.first.Load() == 0 { // the first handler may still be storing it
		time.Sleep(time.Millisecond)
	}
	if d.want > 1 {
		b.ReportMetric(float64(d.want-1)/time.Since(time.Unix(0, d.first.Load())).Seconds(), "msgs/s")
	}
}
