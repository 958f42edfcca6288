package rabbitmq_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// The benchmarks compare the adapter with plain amqp091-go doing the same
// work on the same node in the same run: 1 KB persistent messages to a
// durable classic queue, publisher confirms with mandatory routing,
// manual acks. `make bench` prints them side by side.

const benchWindow = 1000

var benchPayload = make([]byte, 1024)

// benchTopic declares a topic exchange with one durable queue bound to it
// and returns their names and a cleanup that deletes both.
func benchTopic(b *testing.B, ch *amqp.Channel, queueArgs amqp.Table) (exchange, queue string, cleanup func()) {
	b.Helper()
	exchange, queue = testenv.Name(b, "bx"), testenv.Name(b, "bq")
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, queueArgs); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		b.Fatal(err)
	}
	return exchange, queue, func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = ch.ExchangeDelete(exchange, false, false)
	}
}

func rawPublishing(i int) amqp.Publishing {
	return amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		MessageId:    broker.NewID(),
		Timestamp:    time.Now(),
		Body:         benchPayload,
		Headers:      amqp.Table{"seq": fmt.Sprint(i)},
	}
}

// rawWindowPublish publishes n messages on ch (in confirm mode) with up to
// benchWindow unconfirmed at a time.
func rawWindowPublish(b *testing.B, ch *amqp.Channel, exchange string, n int) {
	b.Helper()
	rawWindowPublishAll(b, ch, exchange, rawPublishings(0, n))
}

// rawPublishings returns the publishings of messages lo to hi-1, built
// ahead as benchMessages builds the adapter's: the benchmarks compare
// publishing, not building messages (both have the same live heap).
func rawPublishings(lo, hi int) []amqp.Publishing {
	pubs := make([]amqp.Publishing, hi-lo)
	for i := range pubs {
		pubs[i] = rawPublishing(lo + i)
	}
	return pubs
}

// rawKeys are the routing keys of message i, as benchMessages sets it.
var rawKeys = func() []string {
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	return keys
}()

// rawWindowPublishAll publishes pubs on ch (in confirm mode) with up to
// benchWindow unconfirmed at a time, and checks that none was returned.
func rawWindowPublishAll(b *testing.B, ch *amqp.Channel, exchange string, pubs []amqp.Publishing) {
	b.Helper()
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	window := make([]*amqp.DeferredConfirmation, 0, benchWindow)
	wait := func(dc *amqp.DeferredConfirmation) {
		if !dc.Wait() {
			b.Fatal("nack")
		}
	}
	for i := range pubs {
		if len(window) == benchWindow {
			wait(window[0])
			window = window[1:]
		}
		dc, err := ch.PublishWithDeferredConfirm(exchange, rawKeys[i%64], true, false, pubs[i])
		if err != nil {
			b.Fatal(err)
		}
		window = append(window, dc)
	}
	for _, dc := range window {
		wait(dc)
	}
	select {
	case r := <-returns:
		b.Fatalf("message returned: %s", r.ReplyText)
	default:
	}
}

// meter measures the messages per second and the process's CPU time per
// message (user and system, the client's whole cost: on a machine where
// the broker shares the cores, every client CPU nanosecond is one the
// broker does not get) from its start.
type meter struct {
	start time.Time
	cpu   int64
}

func startMeter() meter { return meter{time.Now(), cpuTime()} }

func (m meter) report(b *testing.B) {
	b.ReportMetric(float64(b.N)/time.Since(m.start).Seconds(), "msgs/s")
	b.ReportMetric(float64(cpuTime()-m.cpu)/float64(b.N), "cpu-ns/msg")
}

// cpuTime is the CPU time the process used so far, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func benchMessages(topic string, n int) []broker.Message {
	msgs := make([]broker.Message, n)
	for i := range msgs {
		msgs[i] = broker.NewMessage(topic, benchPayload)
		msgs[i].Key = fmt.Sprintf("k%d", i%64)
		msgs[i].Headers = map[string]string{"seq": fmt.Sprint(i)}
	}
	return msgs
}

func BenchmarkPublish(b *testing.B) {
	url := testenv.RabbitMQURL(b)
	b.Run("1KB/raw", func(b *testing.B) {
		ch := raw(b, url)
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		b.ResetTimer()
		m := startMeter()
		for i := range b.N {
			dc, err := ch.PublishWithDeferredConfirm(ex, fmt.Sprintf("k%d", i%64), true, false, rawPublishing(i))
			if err != nil {
				b.Fatal(err)
			}
			if !dc.Wait() {
				b.Fatal("nack")
			}
		}
		m.report(b)
		b.StopTimer()
	})
	b.Run("1KB/raw-window", func(b *testing.B) {
		ch := raw(b, url)
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		b.ResetTimer()
		m := startMeter()
		rawWindowPublish(b, ch, ex, b.N)
		m.report(b)
		b.StopTimer()
	})

	adapter := func(b *testing.B, publishers, batch int) {
		ch := raw(b, url)
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		pub, err := rabbitmq.NewPublisher(dial(b, url), rabbitmq.PublisherConfig{NoDeclare: true})
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close()
		msgs := benchMessages(ex, b.N)
		var next atomic.Int64
		ctx := context.Background()
		b.ResetTimer()
		m := startMeter()
		var wg sync.WaitGroup
		for range publishers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					hi := int(next.Add(int64(batch)))
					lo := hi - batch
					if lo >= len(msgs) {
						return
					}
					if err := pub.Publish(ctx, msgs[lo:min(hi, len(msgs))]...); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		m.report(b)
		b.StopTimer()
	}
	// One message per call, one call at a time: the round trip per
	// message of the raw loop.
	b.Run("1KB/steadfast-single-vs-raw", func(b *testing.B) { adapter(b, 1, 1) })
	// Four callers with batches of 250: at most 1000 unconfirmed, as the
	// raw window.
	b.Run("1KB/steadfast-vs-raw-window", func(b *testing.B) { adapter(b, 4, 250) })
	// One caller with batches of 1000: the window drains at the end of
	// each call.
	b.Run("1KB/steadfast-batch1000-vs-raw-window", func(b *testing.B) { adapter(b, 1, 1000) })
	// 64 callers publishing one message each and waiting for its confirm,
	// as request handlers do: the raw loop's work, made concurrent by the
	// channel pool.
	b.Run("1KB/steadfast-64x1-vs-raw", func(b *testing.B) { adapter(b, 64, 1) })
}

func BenchmarkConsume(b *testing.B) {
	url := testenv.RabbitMQURL(b)
	// The raw baseline is a tuned amqp091 consumer: prefetch 1000, one ack
	// per delivery, the handler inline.
	const rawPrefetch = 1000
	b.Run("1KB/raw", func(b *testing.B) {
		ch := raw(b, url)
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		ex, q, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		rawWindowPublish(b, ch, ex, b.N)
		cch := raw(b, url)
		if err := cch.Qos(rawPrefetch, 0, false); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		m := startMeter()
		deliveries, err := cch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		for range b.N {
			d := <-deliveries
			if err := d.Ack(false); err != nil {
				b.Fatal(err)
			}
		}
		m.report(b)
		b.StopTimer()
		cch.Close()
	})
	adapter := func(b *testing.B, cfg rabbitmq.SubscriberConfig, concurrency int) {
		ch := raw(b, url)
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		sub, err := rabbitmq.NewSubscriber(dial(b, url), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close()
		topic := testenv.Name(b, "bt")
		topo, err := sub.Topology(topic, "g")
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.Setup(context.Background(), topic, "g"); err != nil {
			b.Fatal(err)
		}
		conn := dial(b, url)
		defer conn.Delete(context.Background(), topo)
		rawWindowPublish(b, ch, topic, b.N)
		var handled atomic.Int64
		done := make(chan struct{})
		ctx, cancel := context.WithCancel(context.Background())
		b.ResetTimer()
		m := startMeter()
		go func() {
			_ = sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g", Concurrency: concurrency}, func(context.Context, broker.Delivery) error {
				if handled.Add(1) == int64(b.N) {
					close(done)
				}
				return nil
			})
		}()
		<-done
		m.report(b)
		b.StopTimer()
		cancel()
	}
	// What a user gets without tuning: SubscriberConfig{} and a zero
	// Subscription.Concurrency (prefetch DefaultPrefetch).
	b.Run("1KB/steadfast", func(b *testing.B) { adapter(b, rabbitmq.SubscriberConfig{}, 0) })
	// The default before DefaultPrefetch, for the decomposition.
	b.Run("1KB/steadfast-prefetch64", func(b *testing.B) {
		adapter(b, rabbitmq.SubscriberConfig{Prefetch: 64}, 0)
	})
}

// BenchmarkPublishConcurrent: 16 goroutines, each publishing one message per
// call and waiting for its confirm, as request handlers do. The raw
// baselines are what a careful amqp091 user writes: one confirm-mode
// channel shared by the goroutines (amqp091 channels are safe for
// concurrent use; each waits on its own deferred confirmation), or a pool
// of channels picked round robin.
func BenchmarkPublishConcurrent(b *testing.B) {
	url := testenv.RabbitMQURL(b)
	const goroutines = 16
	run := func(b *testing.B, publish func(i int) error) {
		var next atomic.Int64
		b.ResetTimer()
		m := startMeter()
		var wg sync.WaitGroup
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= b.N {
						return
					}
					if err := publish(i); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		m.report(b)
		b.StopTimer()
	}
	rawPool := func(b *testing.B, channels int) {
		conn, err := amqp.Dial(url)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close()
		chs := make([]*amqp.Channel, channels)
		for i := range chs {
			if chs[i], err = conn.Channel(); err != nil {
				b.Fatal(err)
			}
			if err := chs[i].Confirm(false); err != nil {
				b.Fatal(err)
			}
			returns := chs[i].NotifyReturn(make(chan amqp.Return, 1))
			go func() {
				for r := range returns {
					b.Errorf("message returned: %s", r.ReplyText)
				}
			}()
		}
		ex, _, cleanup := benchTopic(b, chs[0], nil)
		defer cleanup()
		pubs := rawPublishings(0, b.N)
		run(b, func(i int) error {
			dc, err := chs[i%channels].PublishWithDeferredConfirm(ex, rawKeys[i%64], true, false, pubs[i])
			if err != nil {
				return err
			}
			if !dc.Wait() {
				return fmt.Errorf("nack")
			}
			return nil
		})
	}
	b.Run("16x1/raw", func(b *testing.B) { rawPool(b, 1) })
	b.Run("16x1/raw-4channels", func(b *testing.B) { rawPool(b, 4) })
	adapter := func(b *testing.B, cfg rabbitmq.PublisherConfig) {
		ch := raw(b, url)
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		pub, err := rabbitmq.NewPublisher(dial(b, url), cfg)
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close()
		msgs := benchMessages(ex, b.N)
		ctx := context.Background()
		run(b, func(i int) error { return pub.Publish(ctx, msgs[i]) })
	}
	b.Run("16x1/steadfast", func(b *testing.B) { adapter(b, rabbitmq.PublisherConfig{}) })
	// All calls on one channel, as the one-channel raw baseline.
	b.Run("16x1/steadfast-channels1", func(b *testing.B) { adapter(b, rabbitmq.PublisherConfig{Channels: 1}) })
}

// BenchmarkPublishBatch publishes in calls of 20,000 messages (fewer when
// b.N is smaller): the raw baseline streams them on one channel with up to
// 1000 unconfirmed, the adapter gets one Publish call with its defaults.
func BenchmarkPublishBatch(b *testing.B) {
	url := testenv.RabbitMQURL(b)
	const batch = 20_000
	b.Run("20k/raw", func(b *testing.B) {
		ch := raw(b, url)
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		pubs := rawPublishings(0, b.N)
		b.ResetTimer()
		m := startMeter()
		for lo := 0; lo < b.N; lo += batch {
			rawWindowPublishAll(b, ch, ex, pubs[lo:min(lo+batch, b.N)])
		}
		m.report(b)
		b.StopTimer()
	})
	b.Run("20k/steadfast", func(b *testing.B) {
		ch := raw(b, url)
		ex, _, cleanup := benchTopic(b, ch, nil)
		defer cleanup()
		pub, err := rabbitmq.NewPublisher(dial(b, url), rabbitmq.PublisherConfig{})
		if err != nil {
			b.Fatal(err)
		}
		defer pub.Close()
		msgs := benchMessages(ex, b.N)
		ctx := context.Background()
		b.ResetTimer()
		m := startMeter()
		for lo := 0; lo < b.N; lo += batch {
			if err := pub.Publish(ctx, msgs[lo:min(lo+batch, b.N)]...); err != nil {
				b.Fatal(err)
			}
		}
		m.report(b)
		b.StopTimer()
	})
}
