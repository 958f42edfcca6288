package rabbitmq_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestFailover restarts a private broker node while publishers have
// batches in flight and a subscriber is consuming. Every Publish call
// either returns nil, and then all its messages are delivered, or returns
// an error; the subscription survives; the transient queue that the node
// forgets on restart is declared again by the reconnecting connection.
func TestFailover(t *testing.T) {
	t.Parallel()
	url, restart := testenv.PrivateRabbitMQ(t)
	ctx := ctxT(t)
	subConn, pubConn := dial(t, url), dial(t, url)
	sub, err := rabbitmq.NewSubscriber(subConn, rabbitmq.SubscriberConfig{})
	if err != nil {
		t.Fatal(err)
	}
	topic := "orders"
	if err := sub.Setup(ctx, topic, "g"); err != nil {
		t.Fatal(err)
	}
	transient := rabbitmq.Topology{
		Queues:   []rabbitmq.Queue{{Name: "transient", Transient: true}},
		Bindings: []rabbitmq.Binding{{Exchange: topic, Queue: "transient", Key: "#"}},
	}
	if err := pubConn.Declare(ctx, transient); err != nil {
		t.Fatal(err)
	}
	pub, err := rabbitmq.NewPublisher(pubConn, rabbitmq.PublisherConfig{Window: 200})
	if err != nil {
		t.Fatal(err)
	}

	var (
		mu      sync.Mutex
		handled = map[string]int{}
	)
	var total atomic.Int64
	sctx, stopSub := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() {
		subDone <- sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: "g", Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			handled[d.ID]++
			mu.Unlock()
			total.Add(1)
			return nil
		})
	}()

	// Publishers: each call is a batch of 300; a call's messages count as
	// sent only when it returned nil.
	var (
		sentMu     sync.Mutex
		sent       []string
		failed     atomic.Int64
		stopPub    atomic.Bool
		calls      atomic.Int64
		pubWG      sync.WaitGroup
		firstBatch = make(chan struct{})
		once       sync.Once
	)
	// However the test ends, the publishers stop before it does: a Fatal
	// below must not leave them logging into a finished test.
	pctx, cancelPub := context.WithCancel(ctx)
	t.Cleanup(func() {
		stopPub.Store(true)
		cancelPub()
		pubWG.Wait()
	})
	for p := range 3 {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for i := 0; !stopPub.Load(); i++ {
				var batch []broker.Message
				for j := range 300 {
					m := broker.NewMessage(topic, []byte(fmt.Sprintf("%d/%d/%d", p, i, j)))
					m.Key = fmt.Sprintf("k%d", j%8)
					batch = append(batch, m)
				}
				cctx, cancel := context.WithTimeout(pctx, time.Minute)
				err := pub.Publish(cctx, batch...)
				cancel()
				calls.Add(1)
				if err != nil {
					t.Logf("publish call failed (allowed, its messages are not counted): %v", err)
					failed.Add(1)
					continue
				}
				sentMu.Lock()
				for _, m := range batch {
					sent = append(sent, m.ID)
				}
				sentMu.Unlock()
				once.Do(func() { close(firstBatch) })
			}
		}()
	}
	select {
	case <-firstBatch:
	case <-ctx.Done():
		t.Fatal("no publish call succeeded before the test's deadline")
	}
	before := calls.Load()
	if err := restart(ctx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// Keep publishing a little after the restart, then stop.
	for calls.Load() < before+10 {
		time.Sleep(10 * time.Millisecond)
	}
	stopPub.Store(true)
	pubWG.Wait()

	sentMu.Lock()
	want := append([]string(nil), sent...)
	sentMu.Unlock()
	waitFor(t, "every confirmed message delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range want {
			if handled[id] == 0 {
				return false
			}
		}
		return true
	})
	select {
	case err := <-subDone:
		t.Fatalf("subscription ended during the restart: %v", err)
	default:
	}
	stopSub()
	if err := <-subDone; err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	mu.Lock()
	dups := 0
	for _, n := range handled {
		dups += n - 1
	}
	mu.Unlock()
	t.Logf("%d publish calls, %d failed; %d messages confirmed and delivered, %d duplicate deliveries", calls.Load(), failed.Load(), len(want), dups)

	// The node forgot the transient queue; the reconnected connection
	// declared it again.
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, "the transient queue declared again", func() bool {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		_, err = ch.QueueDeclarePassive("transient", false, false, false, false, nil)
		return err == nil
	})
}
