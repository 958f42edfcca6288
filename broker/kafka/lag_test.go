package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// fakeMeterProvider captures observable callbacks so a test can collect
// them, without an OpenTelemetry SDK.
type fakeMeterProvider struct {
	noop.MeterProvider
	meter *fakeMeter
}

func (p *fakeMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter { return p.meter }

type fakeMeter struct {
	noop.Meter
	mu        sync.Mutex
	callbacks []metric.Callback
}

func (m *fakeMeter) RegisterCallback(cb metric.Callback, _ ...metric.Observable) (metric.Registration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.callbacks = append(m.callbacks, cb)
	return noop.Registration{}, nil
}

type observation struct {
	value int64
	attrs attribute.Set
}

type fakeObserver struct {
	embedded.Observer
	mu  sync.Mutex
	obs []observation
}

func (o *fakeObserver) ObserveFloat64(metric.Float64Observable, float64, ...metric.ObserveOption) {}
func (o *fakeObserver) ObserveInt64(_ metric.Int64Observable, v int64, opts ...metric.ObserveOption) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.obs = append(o.obs, observation{v, metric.NewObserveConfig(opts).Attributes()})
}

// collect runs the registered callbacks and returns lag per partition.
func (m *fakeMeter) collect(t *testing.T) map[int]int64 {
	t.Helper()
	m.mu.Lock()
	cbs := append([]metric.Callback(nil), m.callbacks...)
	m.mu.Unlock()
	o := &fakeObserver{}
	for _, cb := range cbs {
		if err := cb(context.Background(), o); err != nil {
			t.Errorf("lag callback: %v", err)
		}
	}
	out := map[int]int64{}
	for _, ob := range o.obs {
		p, _ := ob.attrs.Value("messaging.destination.partition.id")
		out[int(p.AsInt64())] = ob.value
	}
	return out
}

// TestLagAndCommitPoint: a message whose handler keeps failing holds its
// partition's committed offset at or below it, although later messages of
// the same partition (other keys) are handled; Lag and the OpenTelemetry
// gauge report the remaining lag; when the message finally succeeds, lag
// drops to zero everywhere.
func TestLagAndCommitPoint(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	meter := &fakeMeter{}
	k := newKit(t, brokers, func(c *SubscriberConfig) { c.MeterProvider = &fakeMeterProvider{meter: meter} })
	topic, group := testenv.Name(t, "t"), testenv.Name(t, "g")
	k.createTopic(t, topic, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var msgs []broker.Message
	for i := range 60 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("key-%d", i)
		msgs = append(msgs, m)
	}
	if err := k.pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	lags, err := k.sub.Lag(ctx, topic, group)
	if err != nil || len(lags) != 3 || sumLag(lags) != 60 || lags[0].Committed != -1 {
		t.Fatalf("lag before consuming = %+v, %v; want 3 partitions, 60 records, nothing committed", lags, err)
	}

	stuck := msgs[0]
	var (
		mu        sync.Mutex
		stuckAt   = int64(-1)
		stuckPart int32
		laterDone = map[int32]int64{} // highest offset handled per partition
		release   atomic.Bool
		handled   = map[string]bool{}
	)
	allButOne := make(chan struct{})
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			if d.ID == stuck.ID && !release.Load() {
				stuckAt, stuckPart = d.Offset, d.Partition
				return errors.New("not yet")
			}
			laterDone[d.Partition] = max(laterDone[d.Partition], d.Offset)
			handled[d.ID] = true
			if len(handled) == len(msgs)-1 && !release.Load() {
				close(allButOne)
			}
			return nil
		})
	}()
	select {
	case <-allButOne:
	case <-ctx.Done():
		t.Fatal("other messages not handled while one kept failing")
	}
	mu.Lock()
	at, part := stuckAt, stuckPart // the handler keeps writing them while it retries
	if laterDone[part] <= at {
		mu.Unlock()
		t.Fatalf("no message after the failing one (offset %d) on its partition %d was handled", at, part)
	}
	mu.Unlock()
	// Wait until the other partitions' commits are in, then check that the
	// stuck partition's commit did not pass the failing message.
	for {
		lags, err = k.sub.Lag(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		zero := 0
		for _, l := range lags {
			if l.Lag == 0 {
				zero++
			}
		}
		if zero == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("other partitions never fully committed: %+v", lags)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // two more commit intervals
	lags, _ = k.sub.Lag(ctx, topic, group)
	for _, l := range lags {
		if l.Partition == part && (l.Committed > at || l.Lag == 0) {
			t.Errorf("partition %d committed %d past the failing message at offset %d", l.Partition, l.Committed, at)
		}
	}
	gauge := meter.collect(t)
	if len(gauge) != 3 || gauge[int(part)] == 0 {
		t.Errorf("lag gauge = %v, want 3 partitions with lag on partition %d", gauge, part)
	}

	release.Store(true)
	for {
		lags, err = k.sub.Lag(ctx, topic, group)
		if err == nil && sumLag(lags) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("lag never reached zero: %+v %v", lags, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for p, v := range meter.collect(t) {
		if v != 0 {
			t.Errorf("lag gauge for partition %d = %d after everything was handled", p, v)
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := meter.collect(t); len(got) != 0 {
		t.Errorf("lag gauge still observed after the subscription ended: %v", got)
	}
}
