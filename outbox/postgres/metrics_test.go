package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// fakeMeter records what the relay reports through the OpenTelemetry API.
type fakeMeter struct {
	noop.Meter
	mu      sync.Mutex
	sums    map[string]float64 // counters: sum; histograms: number of records
	names   map[any]string     // observable instrument -> name
	cbs     []metric.Callback
	gauges  map[string]float64
	removed int
}

type fakeProvider struct {
	noop.MeterProvider
	m *fakeMeter
}

func (p fakeProvider) Meter(string, ...metric.MeterOption) metric.Meter { return p.m }

func newFakeMeter() *fakeMeter {
	return &fakeMeter{sums: map[string]float64{}, names: map[any]string{}, gauges: map[string]float64{}}
}

func (m *fakeMeter) add(name string, v float64) {
	m.mu.Lock()
	m.sums[name] += v
	m.mu.Unlock()
}

func (m *fakeMeter) snapshot() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]float64, len(m.sums))
	for k, v := range m.sums {
		out[k] = v
	}
	return out
}

func (m *fakeMeter) sum(name string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sums[name]
}

type fakeCounter struct {
	noop.Int64Counter
	m    *fakeMeter
	name string
}

func (c fakeCounter) Add(_ context.Context, v int64, _ ...metric.AddOption) {
	c.m.add(c.name, float64(v))
}

type fakeFloatHist struct {
	noop.Float64Histogram
	m    *fakeMeter
	name string
}

func (h fakeFloatHist) Record(context.Context, float64, ...metric.RecordOption) { h.m.add(h.name, 1) }

type fakeIntHist struct {
	noop.Int64Histogram
	m    *fakeMeter
	name string
}

func (h fakeIntHist) Record(_ context.Context, v int64, _ ...metric.RecordOption) { h.m.add(h.name, 1) }

type fakeIntGauge struct{ noop.Int64ObservableGauge }
type fakeFloatGauge struct{ noop.Float64ObservableGauge }

func (m *fakeMeter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return fakeCounter{m: m, name: name}, nil
}

func (m *fakeMeter) Float64Histogram(name string, _ ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	return fakeFloatHist{m: m, name: name}, nil
}

func (m *fakeMeter) Int64Histogram(name string, _ ...metric.Int64HistogramOption) (metric.Int64Histogram, error) {
	return fakeIntHist{m: m, name: name}, nil
}

func (m *fakeMeter) Int64ObservableGauge(name string, _ ...metric.Int64ObservableGaugeOption) (metric.Int64ObservableGauge, error) {
	g := &fakeIntGauge{}
	m.mu.Lock()
	m.names[g] = name
	m.mu.Unlock()
	return g, nil
}

func (m *fakeMeter) Float64ObservableGauge(name string, _ ...metric.Float64ObservableGaugeOption) (metric.Float64ObservableGauge, error) {
	g := &fakeFloatGauge{}
	m.mu.Lock()
	m.names[g] = name
	m.mu.Unlock()
	return g, nil
}

type fakeReg struct {
	embedded.Registration
	m *fakeMeter
}

func (r fakeReg) Unregister() error {
	r.m.mu.Lock()
	r.m.cbs = nil
	r.m.removed++
	r.m.mu.Unlock()
	return nil
}

func (m *fakeMeter) RegisterCallback(cb metric.Callback, _ ...metric.Observable) (metric.Registration, error) {
	m.mu.Lock()
	m.cbs = append(m.cbs, cb)
	m.mu.Unlock()
	return fakeReg{m: m}, nil
}

type fakeObserver struct {
	embedded.Observer
	m *fakeMeter
}

func (o fakeObserver) ObserveFloat64(obs metric.Float64Observable, v float64, _ ...metric.ObserveOption) {
	o.m.gauges[o.m.names[obs]] = v
}

func (o fakeObserver) ObserveInt64(obs metric.Int64Observable, v int64, _ ...metric.ObserveOption) {
	o.m.gauges[o.m.names[obs]] = float64(v)
}

// collect runs the registered callbacks, as a metric reader would.
func (m *fakeMeter) collect() map[string]float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gauges = map[string]float64{}
	for _, cb := range m.cbs {
		_ = cb(context.Background(), fakeObserver{m: m})
	}
	out := map[string]float64{}
	for k, v := range m.gauges {
		out[k] = v
	}
	return out
}

// The relay reports published, failed and parked rows, batch latency and
// size, and backlog gauges through the MeterProvider it is given.
func TestRelayMetrics(t *testing.T) {
	t.Parallel()
	h := newHarness(t, postgres.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := outboxtest.MemoryBroker(t)
	poison := outboxtest.SeqMessage("t", "p", 0)
	pub := &outboxtest.FaultyPublisher{Next: b.Publisher, Reject: func(m broker.Message) error {
		if m.ID == poison.ID {
			return errors.New("refused")
		}
		return nil
	}}
	msgs := []broker.Message{poison}
	for i := range 10 {
		msgs = append(msgs, outboxtest.SeqMessage("t", fmt.Sprint("k", i), 0))
	}
	if err := h.store.Enqueue(ctx, h.pool, msgs...); err != nil {
		t.Fatal(err)
	}
	fm := newFakeMeter()
	r, err := outbox.NewRelay(h.store, pub, outbox.Config{MaxAttempts: 1, MeterProvider: fakeProvider{m: fm},
		StatsInterval: 20 * time.Millisecond, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	var g map[string]float64
	outboxtest.Eventually(t, time.Minute, "metrics settle", func() (bool, string) {
		g = fm.collect()
		return fm.sum(outbox.MetricPublished) == 10 && g[outbox.MetricDead] == 1 && g[outbox.MetricPending] == 0,
			fmt.Sprint(fm.snapshot(), g)
	})
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fm.sum(outbox.MetricFailed) != 1 || fm.sum(outbox.MetricParked) != 1 {
		t.Errorf("failed %v, parked %v; want 1, 1", fm.sum(outbox.MetricFailed), fm.sum(outbox.MetricParked))
	}
	if fm.sum(outbox.MetricBatchDuration) < 1 || fm.sum(outbox.MetricBatchSize) < 1 {
		t.Errorf("batch histograms recorded %v and %v times", fm.sum(outbox.MetricBatchDuration), fm.sum(outbox.MetricBatchSize))
	}
	if _, ok := g[outbox.MetricOldestPendingAge]; !ok {
		t.Errorf("no oldest-pending-age gauge: %v", g)
	}
	fm.mu.Lock()
	removed := fm.removed
	fm.mu.Unlock()
	if removed != 1 {
		t.Errorf("gauge callback unregistered %d times when Run returned, want 1", removed)
	}
}
