package rabbitmq_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestDefaultPrefetch: a member of a SubscriberConfig{} subscriber with the
// default concurrency is sent DefaultPrefetch unacknowledged deliveries
// ahead, no more: the rest stay ready in the queue until it acks.
func TestDefaultPrefetch(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic, queue, pub := group(t, url, sub, rabbitmq.Groups{})
	const extra = 20
	batch := make([]broker.Message, rabbitmq.DefaultPrefetch+extra)
	for i := range batch {
		batch[i] = broker.NewMessage(topic, nil)
	}
	if err := pub.Publish(ctxT(t), batch...); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var handled atomic.Int64
	r := start(sub, broker.Subscription{Topic: topic, Group: "g"}, func(context.Context, broker.Delivery) error {
		<-release
		handled.Add(1)
		return nil
	})
	ch := raw(t, url)
	waitFor(t, "the member to take its prefetch", func() bool { return queueDepth(t, ch, queue) <= extra })
	time.Sleep(100 * time.Millisecond)
	if n := queueDepth(t, ch, queue); n != extra {
		t.Errorf("%d messages ready with the default prefetch of %d messages, want %d", n, len(batch), extra)
	}
	close(release)
	waitFor(t, "all handled", func() bool { return handled.Load() == int64(len(batch)) })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}
