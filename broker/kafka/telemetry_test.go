package kafka

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestSpans: Publish emits a "publish <topic>" producer span under the
// caller's and puts its trace context in the record's traceparent header;
// the handler runs in a "process <topic>" consumer span parented by it. A
// Pipeline's Transform runs in a process span too, and its output carries
// that span's trace context.
func TestSpans(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	rec := telemetrytest.New(t)
	cfg := Config{Brokers: brokers, TracerProvider: rec.Provider}
	k := newKit(t, brokers, nil)
	in, out := testenv.Name(t, "in"), testenv.Name(t, "out")
	k.createTopic(t, in, 1)
	k.createTopic(t, out, 1)
	pub, err := NewPublisher(PublisherConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sc := testSubConfig(brokers)
	sc.TracerProvider = rec.Provider
	sub, err := NewSubscriber(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	p, err := NewPipeline(PipelineConfig{Config: cfg, HeartbeatInterval: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pctx, caller := rec.Caller(ctx)
	if err := pub.Publish(pctx, broker.NewMessage(in, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	caller.End()

	handled := make(chan trace.SpanContext, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go sub.Subscribe(sctx, broker.Subscription{Topic: in, Group: testenv.Name(t, "g")}, func(hctx context.Context, _ broker.Delivery) error {
		select {
		case handled <- trace.SpanContextFromContext(hctx):
		default:
		}
		return nil
	})
	transformed := make(chan trace.SpanContext, 1)
	go p.Run(sctx, broker.Subscription{Topic: in, Group: testenv.Name(t, "p")}, func(tctx context.Context, d broker.Delivery) ([]broker.Message, error) {
		select {
		case transformed <- trace.SpanContextFromContext(tctx):
		default:
		}
		return []broker.Message{broker.NewMessage(out, d.Payload)}, nil
	})
	var hsc, tsc trace.SpanContext
	for _, c := range []struct {
		ch  chan trace.SpanContext
		dst *trace.SpanContext
	}{{handled, &hsc}, {transformed, &tsc}} {
		select {
		case *c.dst = <-c.ch:
		case <-ctx.Done():
			t.Fatal("message not handled and transformed in time")
		}
	}
	rec.CheckPublishProcess(t, system, in, caller.SpanContext(), hsc)

	// The pipeline's output record carries its transform span's context.
	got := make(chan string, 1)
	go sub.Subscribe(sctx, broker.Subscription{Topic: out, Group: testenv.Name(t, "o")}, func(_ context.Context, d broker.Delivery) error {
		select {
		case got <- d.Headers[broker.HeaderTraceparent]:
		default:
		}
		return nil
	})
	select {
	case tp := <-got:
		want := "00-" + tsc.TraceID().String() + "-" + tsc.SpanID().String() + "-01"
		if tp != want || tsc.TraceID() != caller.SpanContext().TraceID() {
			t.Errorf("output traceparent %q, want the transform span's %q in the caller's trace", tp, want)
		}
	case <-ctx.Done():
		t.Fatal("pipeline output not consumed in time")
	}
}
