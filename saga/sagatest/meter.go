package sagatest

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"
)

// Meter is a metric.MeterProvider that sums every Int64Counter by
// instrument name and ignores other instruments: enough to assert that a
// metric was recorded, without an SDK.
type Meter struct {
	embedded.MeterProvider
	mu     sync.Mutex
	counts map[string]int64
}

// NewMeter returns an empty Meter.
func NewMeter() *Meter { return &Meter{counts: map[string]int64{}} }

// Count returns the sum recorded by the counters named name.
func (m *Meter) Count(name string) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[name]
}

// Meter implements metric.MeterProvider.
func (m *Meter) Meter(string, ...metric.MeterOption) metric.Meter { return &meter{p: m} }

type meter struct {
	noop.Meter
	p *Meter
}

func (m *meter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return &counter{name: name, p: m.p}, nil
}

type counter struct {
	noop.Int64Counter
	name string
	p    *Meter
}

func (c *counter) Add(_ context.Context, v int64, _ ...metric.AddOption) {
	c.p.mu.Lock()
	c.p.counts[c.name] += v
	c.p.mu.Unlock()
}
