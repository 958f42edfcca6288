package rabbitmq_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/telemetry/telemetrytest"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestSpans: Publish emits a "publish <topic>" producer span under the
// caller's and puts its trace context in the message's traceparent header;
// the handler runs in a "process <topic>" consumer span parented by it.
func TestSpans(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	rec := telemetrytest.New(t)
	conn := dialConfig(t, rabbitmq.Config{URL: url, TracerProvider: rec.Provider})
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	topic, group := brokertest.UniqueName(t, "t"), brokertest.UniqueName(t, "g")
	topo, err := sub.Topology(topic, group)
	if err != nil {
		t.Fatal(err)
	}
	newCleaner(t, url).add(topo)
	if err := sub.Setup(ctx, topic, group); err != nil {
		t.Fatal(err)
	}

	pctx, caller := rec.Caller(ctx)
	if err := pub.Publish(pctx, broker.NewMessage(topic, []byte("x"))); err != nil {
		t.Fatal(err)
	}
	caller.End()
	handled := make(chan trace.SpanContext, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: group}, func(hctx context.Context, _ broker.Delivery) error {
		select {
		case handled <- trace.SpanContextFromContext(hctx):
		default:
		}
		return nil
	})
	select {
	case sc := <-handled:
		rec.CheckPublishProcess(t, "rabbitmq", topic, caller.SpanContext(), sc)
	case <-ctx.Done():
		t.Fatal("message not handled in time")
	}
}
