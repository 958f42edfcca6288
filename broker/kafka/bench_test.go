package kafka

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// The benchmarks compare the adapter with raw franz-go doing the same work
// in the same run, each variant on a fresh in-process kfake cluster (or on
// the cluster STEADFAST_KAFKA_BROKERS names):
//
//   - Publish: 8 goroutines publish batches of 100 keyed messages and wait
//     for the acknowledgements (acks=all, idempotent, 5ms linger, snappy).
//     raw uses ProduceSync with the same client settings.
//   - Consume: a single group member reads b.N pre-published keyed messages.
//     raw polls with franz-go's default autocommit and visits each record;
//     the adapter decodes each record to a Delivery, runs it through its
//     per-key scheduler and handler pool, and commits completed offsets.
//     msgs/s counts from the first record, leaving out the group join.
//
// Payloads are random bytes, different for every message, so compression
// does not make records artificially cheap.

const (
	benchPartitions = 8
	benchPublishers = 8
	benchBatch      = 100
	benchKeys       = 1000
)

var benchSizes = []struct {
	name string
	size int
}{{"100B", 100}, {"1KB", 1024}}

// benchPool holds random bytes that payloads are cut from: every message
// gets a different, incompressible payload, like real traffic, so batch
// compression cannot fold repeated payloads and hide the cost of bytes.
var benchPool = func() []byte {
	p := make([]byte, 16<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p
}()

// benchPayload returns message i's payload of size bytes.
func benchPayload(i, size int) []byte {
	off := int((uint64(i) * 0x9e3779b97f4a7c15) % uint64(len(benchPool)-size))
	return benchPool[off : off+size : off+size]
}

func benchTopic(b *testing.B, brokers []string) string {
	b.Helper()
	a, err := NewAdmin(Config{Brokers: brokers})
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	name := testenv.Name(b, "bench")
	if err := a.CreateTopic(context.Background(), TopicSpec{Name: name, Partitions: benchPartitions}); err != nil {
		b.Fatal(err)
	}
	return name
}

func rawProducer(b *testing.B, brokers []string) *kgo.Client {
	b.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProducerBatchMaxBytes(1<<20),
		kgo.ProducerBatchCompression(kgo.SnappyCompression()),
		kgo.MaxBufferedRecords(100_000),
		kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64<<10, true, true, nil)),
	)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	return cl
}

// runPublishers splits n messages over benchPublishers goroutines calling
// publish with batches of up to benchBatch starting at message index i.
func runPublishers(b *testing.B, n int, publish func(start, count int) error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, benchPublishers)
	)
	for range benchPublishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				start := int(next.Add(benchBatch)) - benchBatch
				if start >= n {
					return
				}
				if err := publish(start, min(benchBatch, n-start)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func BenchmarkPublish(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				brokers := testenv.Kafka(b)
				topic := benchTopic(b, brokers)
				cl := rawProducer(b, brokers)
				ctx := context.Background()
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				start := time.Now()
				runPublishers(b, b.N, func(first, count int) error {
					recs := make([]*kgo.Record, count)
					for i := range recs {
						recs[i] = &kgo.Record{Topic: topic, Key: []byte("key-" + strconv.Itoa((first+i)%benchKeys)), Value: benchPayload(first+i, sz.size)}
					}
					return cl.ProduceSync(ctx, recs...).FirstErr()
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
			b.Run("steadfast", func(b *testing.B) {
				brokers := testenv.Kafka(b)
				topic := benchTopic(b, brokers)
				pub, err := NewPublisher(PublisherConfig{Config: Config{Brokers: brokers}})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = pub.Close() })
				ctx := context.Background()
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				start := time.Now()
				runPublishers(b, b.N, func(first, count int) error {
					msgs := make([]broker.Message, count)
					for i := range msgs {
						msgs[i] = broker.Message{Topic: topic, Key: "key-" + strconv.Itoa((first+i)%benchKeys), Payload: benchPayload(first+i, sz.size)}
					}
					return pub.Publish(ctx, msgs...)
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
		})
	}
}

// fill publishes n keyed messages of size bytes to a new topic through the
// adapter, so both consumers read identical records (with the ID header).
func fill(b *testing.B, brokers []string, n, size int) string {
	b.Helper()
	topic := benchTopic(b, brokers)
	pub, err := NewPublisher(PublisherConfig{Config: Config{Brokers: brokers}})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	runPublishers(b, n, func(first, count int) error {
		msgs := make([]broker.Message, count)
		for i := range msgs {
			msgs[i] = broker.Message{Topic: topic, Key: "key-" + strconv.Itoa((first+i)%benchKeys), Payload: benchPayload(first+i, size)}
		}
		return pub.Publish(context.Background(), msgs...)
	})
	return topic
}

// consumeRate is the consumption rate from the first record on, so the
// group join, which both variants pay once, does not count.
func consumeRate(n int, first time.Time) float64 {
	if n <= 1 {
		return 0
	}
	return float64(n-1) / time.Since(first).Seconds()
}

func BenchmarkConsume(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				b.StopTimer()
				brokers := testenv.Kafka(b)
				topic := fill(b, brokers, b.N, sz.size)
				cl, err := kgo.NewClient(
					kgo.SeedBrokers(brokers...),
					kgo.ConsumerGroup(testenv.Name(b, "g")),
					kgo.ConsumeTopics(topic),
					kgo.Balancers(kgo.CooperativeStickyBalancer()),
					kgo.ConsumeStartOffset(kgo.NewOffset().AtStart()),
				)
				if err != nil {
					b.Fatal(err)
				}
				defer cl.Close()
				b.SetBytes(int64(sz.size))
				b.StartTimer()
				var (
					start       time.Time
					seen, bytes int
				)
				for seen < b.N {
					fs := cl.PollFetches(context.Background())
					if err := fs.Err0(); err != nil {
						b.Fatal(err)
					}
					if seen == 0 && !fs.Empty() {
						start = time.Now()
					}
					fs.EachRecord(func(r *kgo.Record) {
						seen++
						bytes += len(r.Key) + len(r.Value)
					})
				}
				b.ReportMetric(consumeRate(b.N, start), "msgs/s")
				_ = bytes
			})
			b.Run("steadfast", func(b *testing.B) {
				b.StopTimer()
				brokers := testenv.Kafka(b)
				topic := fill(b, brokers, b.N, sz.size)
				sub, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: brokers}})
				if err != nil {
					b.Fatal(err)
				}
				defer sub.Close()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var seen, startNanos atomic.Int64
				all := make(chan struct{})
				want := int64(b.N)
				b.SetBytes(int64(sz.size))
				b.StartTimer()
				done := make(chan error, 1)
				go func() {
					done <- sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: testenv.Name(b, "g")}, func(_ context.Context, d broker.Delivery) error {
						n := seen.Add(1)
						if n == 1 {
							startNanos.Store(time.Now().UnixNano())
						}
						if n == want {
							close(all)
						}
						return nil
					})
				}()
				<-all
				for startNanos.Load() == 0 { // the first handler may still be storing it
					time.Sleep(time.Millisecond)
				}
				b.ReportMetric(consumeRate(b.N, time.Unix(0, startNanos.Load())), "msgs/s")
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(fmt.Errorf("subscribe: %w", err))
				}
			})
		})
	}
}
