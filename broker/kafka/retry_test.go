package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestPublishRetryAfterAppend: the cluster appends produce requests but
// answers NOT_ENOUGH_REPLICAS_AFTER_APPEND, so the Publisher retries
// records that are already in the log. The idempotent producer's sequence
// numbers let the brokers drop the resent copies: Publish succeeds and every
// message is in the log exactly once. This test needs the in-process
// cluster (it injects the faults), so it ignores STEADFAST_KAFKA_BROKERS.
func TestPublishRetryAfterAppend(t *testing.T) {
	t.Parallel()
	c := testenv.KafkaCluster(t)
	brokers := c.ListenAddrs()
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "t")
	k.createTopic(t, topic, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const n, faults = 300, 6
	h := c.Fault(kfake.Fault{
		Keys:  []kmsg.Key{kmsg.Produce},
		Topic: topic,
		Err:   kerr.NotEnoughReplicasAfterAppend,
		Count: faults,
	})
	defer h.Remove()
	var msgs []broker.Message
	for i := range n {
		m := broker.NewMessage(topic, []byte(fmt.Sprint(i)))
		m.Key = fmt.Sprintf("k%d", i%20)
		msgs = append(msgs, m)
	}
	// Several calls, so later batches are retried behind earlier ones.
	for i := 0; i < n; i += n / 6 {
		if err := k.pub.Publish(ctx, msgs[i:i+n/6]...); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	if hits := h.Hits(); hits == 0 {
		t.Fatal("no produce request was faulted; the test proves nothing")
	} else {
		t.Logf("%d produce requests appended and answered with an error", hits)
	}

	lags, err := k.admin.Lag(ctx, topic, testenv.Name(t, "none"))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, l := range lags {
		total += l.End - l.Start
	}
	if total != n {
		t.Fatalf("the log holds %d records for %d messages", total, n)
	}
	tally := newOutputTally(n)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}, tally.add)
	}()
	select {
	case <-tally.full:
	case <-ctx.Done():
		t.Fatal("not every message arrived")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	tally.mu.Lock()
	defer tally.mu.Unlock()
	if tally.total != n {
		t.Fatalf("consumed %d records for %d messages", tally.total, n)
	}
}

// TestDrainOnShutdown cancels Subscribe while handlers run. A handler that
// finishes within DrainTimeout keeps its result: its message is committed
// and not handed to the group again. A handler still running at
// DrainTimeout sees its context cancelled, and its message, not
// completed, goes to the next member.
func TestDrainOnShutdown(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	const drain = 400 * time.Millisecond
	k := newKit(t, brokers, func(c *SubscriberConfig) { c.DrainTimeout = drain })
	topic := testenv.Name(t, "t")
	k.createTopic(t, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	quick := broker.NewMessage(topic, []byte("quick"))
	quick.Key = "a"
	stuck := broker.NewMessage(topic, []byte("stuck"))
	stuck.Key = "b"
	if err := k.pub.Publish(ctx, quick, stuck); err != nil {
		t.Fatal(err)
	}
	group := testenv.Name(t, "g")
	sub := broker.Subscription{Topic: topic, Group: group}

	var (
		mu        sync.Mutex
		started   = map[string]bool{}
		quickDone bool
		stuckErr  error
		stuckWait time.Duration
	)
	bothRunning := make(chan struct{})
	runCtx, stop := context.WithCancel(ctx)
	var stopped time.Time
	h := func(hctx context.Context, d broker.Delivery) error {
		mu.Lock()
		started[string(d.Payload)] = true
		if len(started) == 2 {
			close(bothRunning)
		}
		mu.Unlock()
		<-runCtx.Done() // both are in flight when shutdown begins
		if string(d.Payload) == "quick" {
			time.Sleep(drain / 4)
			if hctx.Err() != nil {
				return fmt.Errorf("handler context cancelled before DrainTimeout: %w", hctx.Err())
			}
			mu.Lock()
			quickDone = true
			mu.Unlock()
			return nil
		}
		<-hctx.Done()
		mu.Lock()
		stuckErr, stuckWait = hctx.Err(), time.Since(stopped)
		mu.Unlock()
		return hctx.Err()
	}
	done := make(chan error, 1)
	go func() { done <- k.sub.Subscribe(runCtx, sub, h) }()
	select {
	case <-bothRunning:
	case <-ctx.Done():
		t.Fatal("handlers never started")
	}
	stopped = time.Now()
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if !quickDone {
		t.Error("the quick handler did not finish")
	}
	if !errors.Is(stuckErr, context.Canceled) || stuckWait < drain {
		t.Errorf("stuck handler: context ended with %v after %v, want cancelled after DrainTimeout %v", stuckErr, stuckWait, drain)
	}
	mu.Unlock()

	// The next member gets only the message that did not complete.
	again := newOutputTally(1)
	rctx, rstop := context.WithCancel(ctx)
	go func() { done <- k.sub.Subscribe(rctx, sub, again.add) }()
	select {
	case <-again.full:
	case <-ctx.Done():
		t.Fatal("the unfinished message was not redelivered")
	}
	time.Sleep(500 * time.Millisecond) // let a wrongly redelivered quick message show
	rstop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	again.mu.Lock()
	defer again.mu.Unlock()
	if again.total != 1 || again.ids[stuck.ID] != 1 {
		t.Fatalf("next member got %v, want only the stuck message %s", again.ids, stuck.ID)
	}
}
