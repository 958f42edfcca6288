package testenv

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ClosedAddr returns a loopback host:port nothing listens on, for tests of
// unreachable servers.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	p, err := freePort() // outside the ephemeral range: no connection takes it meanwhile
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// FreePorts returns n ports of 127.0.0.1 that are free now, for a server a
// test stops and starts again on the same ports. They are taken from below
// the kernel's ephemeral range, so no connection of the machine is given
// one of them while the server is down (see freeRange); servers of other
// test processes pick from the same ports, so a clash is possible but rare.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for len(ports) < n {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports
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
// is left out (Skip leaves out more). It is safe for concurrent use by
// handlers.
type Deliveries struct {
	n, first atomic.Int64 // count; UnixNano of the delivery the rate starts at
	from     int64        // that delivery's number
	mark     func()
	want     int64
	all      chan struct{}
}

// NewDeliveries returns a counter that is done after want deliveries.
func NewDeliveries(want int) *Deliveries {
	return &Deliveries{want: int64(want), from: 1, all: make(chan struct{})}
}

// Skip makes Report measure from delivery n+1 on, leaving out the first n
// (the warm-up), when n+1 < want; mark, if not nil, runs in the handler
// that makes delivery n+1, before Report can return. Call it before the
// first delivery.
func (d *Deliveries) Skip(n int, mark func()) {
	if int64(n)+1 < d.want {
		d.from = int64(n) + 1
	}
	d.mark = mark
}

// Add counts one delivery and returns the count so far.
func (d *Deliveries) Add() int64 {
	n := d.n.Add(1)
	if n == d.from {
		if d.mark != nil {
			d.mark()
		}
		d.first.Store(time.Now().UnixNano())
	}
	if n == d.want {
		close(d.all)
	}
	return n
}

// Report waits for the wanted deliveries and reports msgs/s on b: the
// deliveries after the one the rate starts at, over the time since it.
// It returns that number of deliveries.
func (d *Deliveries) Report(b *testing.B) int64 {
	<-d.all
	for d.first.Load() == 0 { // the handler that starts the rate may still be storing it
		time.Sleep(time.Millisecond)
	}
	n := d.want - d.from
	if n > 0 {
		b.ReportMetric(float64(n)/time.Since(time.Unix(0, d.first.Load())).Seconds(), "msgs/s")
	}
	return n
}
