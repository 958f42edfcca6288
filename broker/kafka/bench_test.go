package kafka

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// The benchmarks compare the adapter with raw franz-go doing the same work
// in the same run, each variant on a fresh in-process kfake cluster (or on
// the cluster STEADFAST_KAFKA_BROKERS names):
//
//   - Publish: 8 goroutines publish batches of 100 keyed messages and wait
//     for the acknowledgements (acks=all, idempotent, no linger, snappy).
//     raw uses ProduceSync with the same client settings.
//   - Consume: a single group member reads b.N pre-published keyed messages.
//     raw polls with franz-go's default autocommit (which may commit a
//     record before it was handled) and only visits each record.
//     raw-commit is the at-least-once consumer franz-go documents, doing
//     the adapter's job by hand: it reads each record's key and ID into
//     strings, calls a handler, and marks the poll's records for
//     AutoCommitMarks, one record at a time in the poll goroutine.
//     raw-pooled is raw that also lends franz-go the slices records are
//     decoded into (kgo.PoolRecords) and recycles each record right after
//     visiting it, as the adapter does once a record is finished (see
//     recordPool). The adapter decodes each record to a Delivery, runs it
//     through its per-key scheduler and handler pool, and commits
//     completed offsets.
//     msgs/s counts from the end of the warm-up (the first fifth of the
//     messages; see consumeWarmup), leaving out the group join as well.
//     cpu-ns/msg is the CPU time of the whole process (clients, kfake and
//     garbage collector) per message: with every core busy, it is what
//     decides msgs/s, and other processes on a shared machine do not
//     count in it.
//
// Payloads are JSON events, different for every message (see benchPool).
// The kfake cluster stores nothing in the publish benchmarks and serves
// canned batches in the consume ones (see produceCluster, consumeSource),
// so the CPU goes to the clients being compared rather than to the fake
// broker's storage.

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

// benchPool holds the bytes payloads are cut from, so every message gets a
// different payload. By default they are JSON order events with random
// field values, which Snappy shrinks to about half, like real event
// payloads. STEADFAST_BENCH_PAYLOAD=random makes them random bytes instead:
// Snappy then skips over raw records almost for free, but any repeated
// bytes between payloads (such as a record header) make it search every
// record, so that setting measures Snappy's heuristic more than the client.
var benchPool = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	if os.Getenv("STEADFAST_BENCH_PAYLOAD") == "random" {
		p := make([]byte, 16<<20)
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], r.Uint64())
		}
		return p
	}
	statuses := []string{"created", "paid", "packed", "shipped", "delivered", "cancelled"}
	currencies := []string{"EUR", "USD", "GBP", "JPY", "CHF"}
	p := make([]byte, 0, 16<<20+512)
	for len(p) < 16<<20 {
		p = fmt.Appendf(p, `{"order_id":"%016x","customer":"c-%06d","status":%q,"amount":%d.%02d,"currency":%q,`+
			`"items":[{"sku":"SKU-%05d","qty":%d},{"sku":"SKU-%05d","qty":%d}],"created_at":"2026-11-%02dT%02d:%02d:%02d.%03dZ"}`+"\n",
			r.Uint64(), r.IntN(1e6), statuses[r.IntN(len(statuses))], r.IntN(5000), r.IntN(100), currencies[r.IntN(len(currencies))],
			r.IntN(1e5), 1+r.IntN(9), r.IntN(1e5), 1+r.IntN(9), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1000))
	}
	return p[:16<<20]
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
		kgo.ProducerLinger(0),
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
				brokers := produceCluster(b)
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
				brokers := produceCluster(b)
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

// benchOneCallers is how many goroutines BenchmarkPublishOne runs.
const benchOneCallers = 16

// runOneCallers splits n messages over benchOneCallers goroutines, each
// calling publish with one message index at a time and waiting for it.
func runOneCallers(b *testing.B, n int, publish func(i int) error) {
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, benchOneCallers)
	)
	for range benchOneCallers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := publish(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkPublishOne: 16 goroutines each publish one keyed message per
// call and wait for its acknowledgement, as request handlers that each emit
// an event do. raw is franz-go's ProduceSync of one record per call with the
// adapter's producer settings. Concurrent calls share produce requests in
// both: a call hands its record to the client's buffer, and the records of
// the calls waiting meanwhile go out together in the next request.
func BenchmarkPublishOne(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				brokers := produceCluster(b)
				topic := benchTopic(b, brokers)
				cl := rawProducer(b, brokers)
				ctx := context.Background()
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				start := time.Now()
				runOneCallers(b, b.N, func(i int) error {
					rec := &kgo.Record{Topic: topic, Key: []byte("key-" + strconv.Itoa(i%benchKeys)), Value: benchPayload(i, sz.size)}
					return cl.ProduceSync(ctx, rec).FirstErr()
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
			b.Run("steadfast", func(b *testing.B) {
				brokers := produceCluster(b)
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
				runOneCallers(b, b.N, func(i int) error {
					return pub.Publish(ctx, broker.Message{Topic: topic, Key: "key-" + strconv.Itoa(i%benchKeys), Payload: benchPayload(i, sz.size)})
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

// consumeWarmup returns how many of a consume benchmark's n messages are
// its warm-up, left out of its figures: a fifth. While a consumer starts,
// the process's heap grows to its working size (page faults, zeroed
// memory) and the client's buffers and the adapter's queues fill; the
// figures describe the consumer that runs after that. Measuring from the
// first message instead made a variant's figures depend on whether an
// earlier benchmark of the same process had already grown the heap (by up
// to a third at 100 B), which favoured whichever variant ran last.
func consumeWarmup(n int) int { return n / 5 }

// reportCPU reports as cpu-ns/msg the CPU time (user and system) the process
// spent since cpu0 (from cpuTime), per message of n.
func reportCPU(b *testing.B, cpu0 int64, n int64) {
	if n > 0 {
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(n), "cpu-ns/msg")
	}
}

// cpuTime is the CPU time the process used so far, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

// rawConsumer returns a franz-go group member reading a consumeSource topic
// of b.N messages of size bytes, with opts added to the defaults.
func rawConsumer(b *testing.B, size int, opts ...kgo.Opt) *kgo.Client {
	b.Helper()
	brokers, topic := consumeSource(b, b.N, size)
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup(testenv.Name(b, "g")),
		kgo.ConsumeTopics(topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.ConsumeStartOffset(kgo.NewOffset().AtStart()),
	}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	return cl
}

// pollRate starts the timer and polls cl, passing each poll to handle (which
// returns how many records it handled), until b.N records went through; it
// reports msgs/s and cpu-ns/msg from the first poll after the warm-up on.
func pollRate(b *testing.B, cl *kgo.Client, size int, handle func(kgo.Fetches) int) {
	b.SetBytes(int64(size))
	b.StartTimer()
	var (
		start time.Time
		cpu0  int64
		from  int
		warm  = consumeWarmup(b.N)
	)
	for seen := 0; seen < b.N; {
		if start.IsZero() && seen >= warm {
			start, cpu0, from = time.Now(), cpuTime(), seen
		}
		fs := cl.PollFetches(context.Background())
		if err := fs.Err0(); err != nil {
			b.Fatal(err)
		}
		seen += handle(fs)
	}
	if n := b.N - from; n > 0 {
		b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
		reportCPU(b, cpu0, int64(n))
	}
}

func BenchmarkConsume(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				b.StopTimer()
				cl := rawConsumer(b, sz.size)
				bytes := 0
				pollRate(b, cl, sz.size, func(fs kgo.Fetches) int {
					fs.EachRecord(func(r *kgo.Record) { bytes += len(r.Key) + len(r.Value) })
					return fs.NumRecords()
				})
			})
			b.Run("raw-pooled", func(b *testing.B) {
				b.StopTimer()
				cl := rawConsumer(b, sz.size, kgo.WithPools(new(recordPool)))
				bytes := 0
				pollRate(b, cl, sz.size, func(fs kgo.Fetches) int {
					fs.EachRecord(func(r *kgo.Record) {
						bytes += len(r.Key) + len(r.Value)
						r.Recycle()
					})
					return fs.NumRecords()
				})
			})
			b.Run("raw-commit", func(b *testing.B) {
				b.StopTimer()
				cl := rawConsumer(b, sz.size, kgo.AutoCommitMarks(), kgo.BlockRebalanceOnPoll())
				bytes := 0
				handle := func(key, id string, payload []byte) error {
					bytes += len(key) + len(id) + len(payload)
					return nil
				}
				pollRate(b, cl, sz.size, func(fs kgo.Fetches) int {
					fs.EachRecord(func(r *kgo.Record) {
						var id string
						for _, h := range r.Headers {
							if h.Key == HeaderUUID {
								id = string(h.Value)
							}
						}
						if err := handle(string(r.Key), id, r.Value); err != nil {
							b.Fatal(err)
						}
					})
					cl.MarkCommitRecords(fs.Records()...)
					cl.AllowRebalance()
					return fs.NumRecords()
				})
			})
			b.Run("steadfast", func(b *testing.B) {
				b.StopTimer()
				brokers, topic := consumeSource(b, b.N, sz.size)
				sub, err := NewSubscriber(SubscriberConfig{Config: Config{Brokers: brokers}})
				if err != nil {
					b.Fatal(err)
				}
				defer sub.Close()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				seen := testenv.NewDeliveries(b.N)
				var cpu0 int64
				seen.Skip(consumeWarmup(b.N), func() { cpu0 = cpuTime() })
				b.SetBytes(int64(sz.size))
				b.StartTimer()
				done := make(chan error, 1)
				go func() {
					done <- sub.Subscribe(ctx, broker.Subscription{Topic: topic, Group: testenv.Name(b, "g")}, func(_ context.Context, d broker.Delivery) error {
						seen.Add()
						return nil
					})
				}()
				n := seen.Report(b)
				reportCPU(b, cpu0, n)
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(fmt.Errorf("subscribe: %w", err))
				}
			})
		})
	}
}

// benchCluster returns the seed brokers of a fresh in-process kfake cluster
// built with opts, or the cluster STEADFAST_KAFKA_BROKERS names (ignoring
// opts) when that is set.
func benchCluster(b *testing.B, opts ...kfake.Opt) []string {
	b.Helper()
	if os.Getenv(testenv.EnvKafkaBrokers) != "" {
		return testenv.Kafka(b)
	}
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(3)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Close)
	return c.ListenAddrs()
}

// produceCluster is where publish benchmarks write: a kfake cluster that
// acknowledges produce requests (validating idempotent sequences) and
// discards the records, so its own storage does not compete with the
// producer for the CPU.
func produceCluster(b *testing.B) []string {
	return benchCluster(b, kfake.BlackholeProduce())
}

// consumeSource returns brokers and a topic holding at least n keyed
// messages of size bytes, all published through the adapter so both
// consumers read identical records (with the ID header). On kfake every
// partition serves copies of one such record batch from any offset, so
// fetching costs the broker a copy, not a log read; on a real cluster the
// topic is filled first.
func consumeSource(b *testing.B, n, size int) ([]string, string) {
	b.Helper()
	if os.Getenv(testenv.EnvKafkaBrokers) != "" {
		brokers := testenv.Kafka(b)
		return brokers, fill(b, brokers, n, size)
	}
	brokers := benchCluster(b, kfake.BlackholeProduce(), kfake.SyntheticFetch(kfake.SyntheticBatch{Batch: syntheticBatch(b, size)}))
	return brokers, benchTopic(b, brokers)
}

// syntheticBatch encodes about 256 KiB of keyed messages of size bytes the way
// the Publisher writes them, as one v2 record batch, compressed with the
// Publisher's default codec when that makes it smaller.
func syntheticBatch(b *testing.B, size int) []byte {
	b.Helper()
	count := max(1, (256<<10)/(size+64))
	msgs := make([]broker.Message, count)
	for i := range msgs {
		msgs[i] = broker.Message{Topic: "bench", Key: "key-" + strconv.Itoa(i%benchKeys), Payload: benchPayload(i, size)}
	}
	recs := toRecords(msgs, newIDGen(), nil)
	ts := recs[0].Timestamp.UnixMilli()
	var raw []byte
	for i, r := range recs {
		kr := kmsg.Record{OffsetDelta: int32(i), Key: r.Key, Value: r.Value}
		for _, h := range r.Headers {
			kr.Headers = append(kr.Headers, kmsg.Header{Key: h.Key, Value: h.Value})
		}
		kr.Length = int32(len(kr.AppendTo(nil)) - 1) // the length varint of a small record is one byte
		raw = kr.AppendTo(raw)
	}
	var attrs int16
	comp, err := kgo.DefaultCompressor(kgo.SnappyCompression())
	if err != nil {
		b.Fatal(err)
	}
	if c, codec := comp.Compress(new(bytes.Buffer), raw); codec != kgo.CodecNone && len(c) < len(raw) {
		raw, attrs = c, int16(codec)
	}
	batch := (&kmsg.RecordBatch{
		PartitionLeaderEpoch: -1, Magic: 2, Attributes: attrs, LastOffsetDelta: int32(count - 1),
		FirstTimestamp: ts, MaxTimestamp: ts, ProducerID: -1, ProducerEpoch: -1, FirstSequence: -1,
		NumRecords: int32(count), Records: raw,
	}).AppendTo(nil)
	binary.BigEndian.PutUint32(batch[8:12], uint32(len(batch)-12))
	binary.BigEndian.PutUint32(batch[17:21], crc32.Checksum(batch[21:], crc32.MakeTable(crc32.Castagnoli)))
	return batch
}
