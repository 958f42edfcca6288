package eventsourcetest

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// gauges is a MeterProvider that keeps what float gauges record, for the
// stall report's metric.
type gauges struct {
	noop.MeterProvider
	mu   sync.Mutex
	recs []gaugeRecord
}

type gaugeRecord struct {
	name  string
	value float64
	attrs attribute.Set
}

func (g *gauges) Meter(string, ...metric.MeterOption) metric.Meter { return gaugeMeter{g: g} }

func (g *gauges) records(name string) []gaugeRecord {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []gaugeRecord
	for _, r := range g.recs {
		if r.name == name {
			out = append(out, r)
		}
	}
	return out
}

type gaugeMeter struct {
	noop.Meter
	g *gauges
}

func (m gaugeMeter) Float64Gauge(name string, _ ...metric.Float64GaugeOption) (metric.Float64Gauge, error) {
	return gauge{name: name, g: m.g}, nil
}

type gauge struct {
	noop.Float64Gauge
	name string
	g    *gauges
}

func (x gauge) Record(_ context.Context, v float64, opts ...metric.RecordOption) {
	cfg := metric.NewRecordConfig(opts)
	x.g.mu.Lock()
	x.g.recs = append(x.g.recs, gaugeRecord{name: x.name, value: v, attrs: cfg.Attributes()})
	x.g.mu.Unlock()
}
