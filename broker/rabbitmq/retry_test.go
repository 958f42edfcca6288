package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestRetryChain sends 10 messages through a 3-level retry chain; the
// handler always fails the first 3. Those are seen exactly 4 times (attempts
// 1..4, read from x-death), keep their topic and key on every retry, and end
// in the parking queue with their x-death history; the other 7 are handled
// once each.
func TestRetryChain(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	ctx := ctxT(t)
	topic, group := testenv.Name(t, "t"), "g"
	chain := &rabbitmq.RetryChain{Delays: []time.Duration{20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond}}
	sub, err := rabbitmq.NewSubscriber(dial(t, url), rabbitmq.SubscriberConfig{Groups: rabbitmq.Groups{Retry: chain}})
	if err != nil {
		t.Fatal(err)
	}
	topo, err := sub.Topology(topic, group)
	if err != nil {
		t.Fatal(err)
	}
	newCleaner(t, url).add(topo)
	if err := sub.Setup(ctx, topic, group); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(dial(t, url), rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []broker.Message
	failing := map[string]bool{}
	for i := range 10 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("order.%d", i)
		msgs = append(msgs, m)
		if i < 3 {
			failing[m.ID] = true
		}
	}
	if err := pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}

	type seen struct {
		attempt     int
		redelivered bool
		topic, key  string
		deaths      []rabbitmq.Death
	}
	var (
		mu   sync.Mutex
		byID = map[string][]seen{}
	)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
			deaths, err := rabbitmq.Deaths(d.Headers)
			if err != nil {
				t.Errorf("deaths: %v", err)
			}
			mu.Lock()
			byID[d.ID] = append(byID[d.ID], seen{d.Attempt, d.Redelivered, d.Topic, d.Key, deaths})
			mu.Unlock()
			if failing[d.ID] {
				return errors.New("always fails")
			}
			return nil
		})
	}()

	main := rabbitmq.Groups{}.QueueFor(topic, group)
	ch := raw(t, url)
	parked := 0
	for deadline := time.Now().Add(time.Minute); parked < 3; time.Sleep(20 * time.Millisecond) {
		q, err := ch.QueueDeclarePassive(rabbitmq.ParkingQueue(main), true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		parked = q.Messages
		if time.Now().After(deadline) {
			t.Fatalf("%d messages parked after a minute, want 3", parked)
		}
	}
	time.Sleep(300 * time.Millisecond) // let stray deliveries show
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	for i, m := range msgs {
		got := byID[m.ID]
		var attempts []int
		for _, s := range got {
			attempts = append(attempts, s.attempt)
			if s.topic != topic || s.key != m.Key {
				t.Errorf("message %d attempt %d arrived as %s/%s, want %s/%s", i, s.attempt, s.topic, s.key, topic, m.Key)
			}
			if s.redelivered != (s.attempt > 1) {
				t.Errorf("message %d attempt %d: redelivered = %v", i, s.attempt, s.redelivered)
			}
		}
		want := []int{1}
		if failing[m.ID] {
			want = []int{1, 2, 3, 4}
		}
		if !slices.Equal(attempts, want) {
			t.Errorf("message %d handled with attempts %v, want %v", i, attempts, want)
		}
		if failing[m.ID] && len(got) == 4 {
			// The 4th delivery carries the history of three hops.
			d := got[3].deaths
			if len(d) != 4 {
				t.Errorf("message %d: 4th delivery has %d x-death entries, want 4: %+v", i, len(d), d)
			}
		}
	}

	// The parking queue holds exactly the failing messages, each with its
	// whole history: rejected 4 times from the main queue, expired once
	// from each retry queue.
	var parkedIDs []string
	for range 3 {
		d, ok, err := ch.Get(rabbitmq.ParkingQueue(main), false)
		if err != nil || !ok {
			t.Fatalf("get from parking queue: ok=%v err=%v", ok, err)
		}
		parkedIDs = append(parkedIDs, d.MessageId)
		if !failing[d.MessageId] {
			t.Errorf("message %s parked but it succeeded", d.MessageId)
		}
		deaths, _ := d.Headers["x-death"].([]any)
		counts := map[string]int64{}
		for _, e := range deaths {
			tb := e.(amqp.Table)
			counts[fmt.Sprintf("%s/%s", tb["queue"], tb["reason"])] = tb["count"].(int64)
		}
		want := map[string]int64{
			main + "/rejected":                        4,
			rabbitmq.RetryQueue(main, 1) + "/expired": 1,
			rabbitmq.RetryQueue(main, 2) + "/expired": 1,
			rabbitmq.RetryQueue(main, 3) + "/expired": 1,
		}
		if fmt.Sprint(counts) != fmt.Sprint(want) {
			t.Errorf("parked message %s x-death counts %v, want %v", d.MessageId, counts, want)
		}
	}
	if len(parkedIDs) != 3 {
		t.Errorf("parked %v", parkedIDs)
	}
	if chain.MaxAttempts() != 4 {
		t.Errorf("MaxAttempts = %d", chain.MaxAttempts())
	}
}
