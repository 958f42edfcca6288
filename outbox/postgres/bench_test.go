package postgres_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// Benchmarks of the relay against the same work done with the raw clients,
// in the same run, on the same servers.
//
// BenchmarkRelay: end-to-end throughput of draining 20,000 committed rows
// of 1 KB (random, so incompressible) over 100 keys, from the commit to the
// broker's acknowledgement, with one relay or three running at once (each
// on its own pool, as separate processes would). The raw baseline is the
// loop a team would write by hand with pgx and the broker's client: SELECT
// ... FOR UPDATE SKIP LOCKED LIMIT 1000, publish the batch, UPDATE (or
// DELETE) the rows, COMMIT; it keeps no per-key order across relays and has
// no retry bookkeeping. "defaults" variants run the relay and the store with
// their zero Configs (rows deleted once published, batch 1000, backlog
// gauges every 10s); "keep" variants mark rows published instead
// (KeepPublished) and compare with raw-mark.
//
// BenchmarkLatency: commit-to-acknowledgement latency of single-message
// transactions at a steady 1,000 per second: with the default wake-up (a
// coalesced notification outside the caller's transaction, plus adaptive
// polling), with the notification inside the transaction
// (NotifyInTransaction), and by polling only (every 10ms), against a raw
// pgx + client relay polling every 10ms.
//
// BenchmarkEnqueue: 8 writers commit business transactions (one INSERT of a
// business row with a 1 KB document) as fast as they can; "raw" does only
// that, the others also Enqueue a 1 KB message in the same transaction, with
// the default wake-up or with NotifyInTransaction. No relay runs, so only
// the cost to the caller is measured.

const (
	benchRows  = 20000
	benchKeys  = 100
	benchBatch = 1000
)

// benchBroker is one broker as the benchmarks need it: the adapter, a raw
// send function with the broker's own client, and a fresh topic.
type benchBroker struct {
	name  string
	setup func(b *testing.B) (pub broker.Publisher, raw func(ctx context.Context, msgs []broker.Message) error, topic string)
}

var benchBrokers = []benchBroker{
	{"kafka", func(b *testing.B) (broker.Publisher, func(context.Context, []broker.Message) error, string) {
		seeds := testenv.Kafka(b)
		topic := testenv.Name(b, "t")
		admin, err := kafka.NewAdmin(kafka.Config{Brokers: seeds})
		if err != nil {
			b.Fatal(err)
		}
		defer admin.Close()
		if err := admin.CreateTopic(context.Background(), kafka.TopicSpec{Name: topic, Partitions: 4}); err != nil {
			b.Fatal(err)
		}
		pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: seeds}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = pub.Close() })
		// The raw client: franz-go with the adapter's producer settings.
		cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.ProducerLinger(0), kgo.ProducerBatchCompression(kgo.SnappyCompression()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cl.Close)
		raw := func(ctx context.Context, msgs []broker.Message) error {
			recs := make([]*kgo.Record, len(msgs))
			for i, m := range msgs {
				recs[i] = &kgo.Record{Topic: m.Topic, Key: []byte(m.Key), Value: m.Payload,
					Headers: []kgo.RecordHeader{{Key: "id", Value: []byte(m.ID)}}}
			}
			return cl.ProduceSync(ctx, recs...).FirstErr()
		}
		return pub, raw, topic
	}},
	{"rabbitmq", func(b *testing.B) (broker.Publisher, func(context.Context, []broker.Message) error, string) {
		url := testenv.RabbitMQURL(b)
		topic := testenv.Name(b, "t")
		conn, err := amqp.Dial(url)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = conn.Close() })
		ch, err := conn.Channel()
		if err != nil {
			b.Fatal(err)
		}
		// A topic exchange as the adapter declares it, routed to a queue
		// that keeps only the newest 1,000 messages so runs do not pile up.
		if err := ch.ExchangeDeclare(topic, "topic", true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := ch.QueueDeclare(topic, true, false, false, false,
			amqp.Table{"x-max-length": int32(1000), "x-overflow": "drop-head"}); err != nil {
			b.Fatal(err)
		}
		if err := ch.QueueBind(topic, "#", topic, false, nil); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			if ch, err := conn.Channel(); err == nil {
				_, _ = ch.QueueDelete(topic, false, false, false)
				_ = ch.ExchangeDelete(topic, false, false)
			}
		})
		if err := ch.Confirm(false); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rc, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: url})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { rc.Close() })
		pub, err := rabbitmq.NewPublisher(rc, rabbitmq.PublisherConfig{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { pub.Close() })
		// The raw client: amqp091 on one channel in confirm mode, mandatory
		// persistent publishes, waiting for every confirm of the batch (the
		// adapter's default window is 1000, the batch size).
		var mu sync.Mutex
		raw := func(ctx context.Context, msgs []broker.Message) error {
			mu.Lock()
			defer mu.Unlock()
			confirms := make([]*amqp.DeferredConfirmation, len(msgs))
			for i, m := range msgs {
				dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, m.Topic, m.Key, true, false, amqp.Publishing{
					MessageId: m.ID, Timestamp: m.Time, DeliveryMode: amqp.Persistent, Body: m.Payload})
				if err != nil {
					return err
				}
				confirms[i] = dc
			}
			for _, dc := range confirms {
				ok, err := dc.WaitContext(ctx)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("nacked")
				}
			}
			return nil
		}
		return pub, raw, topic
	}},
}

func BenchmarkRelay(b *testing.B) {
	discard := slog.New(slog.DiscardHandler)
	for _, bb := range benchBrokers {
		b.Run(bb.name+"/1KB", func(b *testing.B) {
			for _, v := range []struct {
				name   string
				raw    bool
				delete bool
				relays int
				cfg    outbox.Config
			}{
				{"raw-mark", true, false, 1, outbox.Config{}},
				{"raw-delete", true, true, 1, outbox.Config{}},
				{"defaults-1relay-vs-raw-delete", false, true, 1, outbox.Config{Logger: discard}},
				{"defaults-3relays-vs-raw-delete", false, true, 3, outbox.Config{Logger: discard}},
				{"keep-1relay-vs-raw-mark", false, false, 1, outbox.Config{KeepPublished: true, Logger: discard}},
			} {
				b.Run(v.name, func(b *testing.B) {
					pub, raw, topic := bb.setup(b)
					h := newHarness(b, postgres.Config{})
					var elapsed time.Duration
					for range b.N {
						b.StopTimer()
						fill(b, h, topic)
						b.StartTimer()
						start := time.Now()
						if v.raw {
							rawDrain(b, h, raw, v.delete)
						} else {
							relayDrain(b, h, pub, v.relays, v.cfg)
						}
						elapsed += time.Since(start)
						b.StopTimer()
						if _, err := h.pool.Exec(context.Background(), "TRUNCATE "+h.store.Table()); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					b.ReportMetric(float64(benchRows*b.N)/elapsed.Seconds(), "msgs/s")
				})
			}
		})
	}
}

// fill commits benchRows messages of 1 KB over benchKeys keys.
func fill(b *testing.B, h *harness, topic string) {
	ctx := context.Background()
	payload := make([]byte, 1024)
	_, _ = rand.Read(payload)
	for i := 0; i < benchRows; i += 1000 {
		msgs := make([]broker.Message, 1000)
		for j := range msgs {
			msgs[j] = broker.NewMessage(topic, payload)
			msgs[j].Key = "k" + strconv.Itoa((i+j)%benchKeys)
		}
		if err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error { return h.store.Enqueue(ctx, tx, msgs...) }); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := h.pool.Exec(ctx, "ANALYZE "+h.store.Table()); err != nil {
		b.Fatal(err)
	}
}

// countingPublisher counts the messages its publisher acknowledged.
type countingPublisher struct {
	broker.Publisher
	n    atomic.Int64
	done chan struct{}
	want int64
	once sync.Once
}

func (c *countingPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	err := c.Publisher.Publish(ctx, msgs...)
	if err == nil && c.n.Add(int64(len(msgs))) >= c.want {
		c.once.Do(func() { close(c.done) })
	}
	return err
}

// relayDrain runs relays (each on its own pool, as separate processes would)
// until the broker acknowledged every row.
func relayDrain(b *testing.B, h *harness, pub broker.Publisher, relays int, cfg outbox.Config) {
	cp := &countingPublisher{Publisher: pub, done: make(chan struct{}), want: benchRows}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range relays {
		b.StopTimer()
		store := h.open(b)
		b.StartTimer()
		r, err := outbox.NewRelay(store, cp, cfg)
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { _ = r.Run(ctx) })
	}
	select {
	case <-cp.done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("relays published %d of %d rows", cp.n.Load(), benchRows)
	}
	cancel()
	wg.Wait()
}

// rawDrain is the hand-written relay: one loop of claim, publish, update.
func rawDrain(b *testing.B, h *harness, send func(context.Context, []broker.Message) error, del bool) {
	ctx := context.Background()
	table := h.store.Table()
	done := "UPDATE " + table + " SET status = 'published', published_at = now() WHERE id = ANY($1)"
	if del {
		done = "DELETE FROM " + table + " WHERE id = ANY($1)"
	}
	for total := 0; total < benchRows; {
		err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "SELECT id, message_id, topic, key, payload FROM "+table+
				" WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", benchBatch)
			if err != nil {
				return err
			}
			var ids []int64
			var msgs []broker.Message
			for rows.Next() {
				var id int64
				var m broker.Message
				if err := rows.Scan(&id, &m.ID, &m.Topic, &m.Key, &m.Payload); err != nil {
					return err
				}
				ids = append(ids, id)
				msgs = append(msgs, m)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			if len(msgs) == 0 {
				return nil
			}
			if err := send(ctx, msgs); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, done, ids); err != nil {
				return err
			}
			total += len(ids)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLatency(b *testing.B) {
	const rate, duration = 1000, 5 * time.Second
	discard := slog.New(slog.DiscardHandler)
	for _, bb := range benchBrokers {
		b.Run(bb.name+"/1000rps", func(b *testing.B) {
			for _, v := range []struct {
				name  string
				raw   bool
				store postgres.Config
				relay outbox.Config
			}{
				{"raw-poll10ms", true, postgres.Config{DisableNotify: true}, outbox.Config{}},
				{"defaults-vs-raw-poll10ms", false, postgres.Config{}, outbox.Config{Logger: discard}},
				{"notifytx-vs-raw-poll10ms", false, postgres.Config{NotifyInTransaction: true}, outbox.Config{Logger: discard}},
				{"poll10ms-vs-raw-poll10ms", false, postgres.Config{DisableNotify: true},
					outbox.Config{PollInterval: 10 * time.Millisecond, MinPollInterval: -1, Logger: discard}},
			} {
				b.Run(v.name, func(b *testing.B) {
					pub, raw, topic := bb.setup(b)
					h := newHarness(b, v.store)
					var all []time.Duration
					for range b.N {
						all = append(all, measureLatency(b, h, topic, pub, raw, v.raw, v.relay, rate, duration)...)
					}
					slices.Sort(all)
					pct := func(p float64) float64 {
						return float64(all[int(p*float64(len(all)-1))]) / float64(time.Millisecond)
					}
					b.ReportMetric(pct(0.50), "p50-ms")
					b.ReportMetric(pct(0.99), "p99-ms")
					b.ReportMetric(pct(1), "max-ms")
				})
			}
		})
	}
}

// measureLatency commits one message per transaction at rate for d while a
// relay publishes them, and returns each message's time from commit to the
// broker's acknowledgement.
func measureLatency(b *testing.B, h *harness, topic string, pub broker.Publisher,
	raw func(context.Context, []broker.Message) error, useRaw bool, cfg outbox.Config, rate int, d time.Duration) []time.Duration {
	var (
		mu        sync.Mutex
		committed = map[string]time.Time{}
		acked     = map[string]time.Time{}
	)
	ack := func(msgs []broker.Message) {
		now := time.Now()
		mu.Lock()
		for _, m := range msgs {
			acked[m.ID] = now
		}
		mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if useRaw {
		wg.Go(func() { rawPoller(ctx, b, h, raw, 10*time.Millisecond, ack) })
	} else {
		r, err := outbox.NewRelay(h.open(b), publisherFunc(func(ctx context.Context, msgs ...broker.Message) error {
			err := pub.Publish(ctx, msgs...)
			if err == nil {
				ack(msgs)
			}
			return err
		}), cfg)
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() { _ = r.Run(ctx) })
	}
	time.Sleep(200 * time.Millisecond) // relay up and listening
	n := int(d.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	payload := make([]byte, 1024)
	_, _ = rand.Read(payload)
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		m := broker.NewMessage(topic, payload)
		m.Key = "k" + strconv.Itoa(i%benchKeys)
		err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error { return h.store.Enqueue(ctx, tx, m) })
		if err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		mu.Lock()
		committed[m.ID] = now
		mu.Unlock()
	}
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		got := len(acked)
		mu.Unlock()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d messages acknowledged", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	out := make([]time.Duration, 0, n)
	for id, c := range committed {
		out = append(out, max(acked[id].Sub(c), 0))
	}
	return out
}

// rawPoller is a hand-written relay polling every poll.
func rawPoller(ctx context.Context, b *testing.B, h *harness, send func(context.Context, []broker.Message) error,
	poll time.Duration, ack func([]broker.Message)) {
	table := h.store.Table()
	for ctx.Err() == nil {
		var msgs []broker.Message
		err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, "SELECT id, message_id, topic, key, payload FROM "+table+
				" WHERE status = 'pending' ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED", benchBatch)
			if err != nil {
				return err
			}
			var ids []int64
			for rows.Next() {
				var id int64
				var m broker.Message
				if err := rows.Scan(&id, &m.ID, &m.Topic, &m.Key, &m.Payload); err != nil {
					return err
				}
				ids = append(ids, id)
				msgs = append(msgs, m)
			}
			if err := rows.Err(); err != nil || len(msgs) == 0 {
				return err
			}
			if err := send(ctx, msgs); err != nil {
				return err
			}
			ack(msgs)
			_, err = tx.Exec(ctx, "UPDATE "+table+" SET status = 'published', published_at = now() WHERE id = ANY($1)", ids)
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				b.Error(err)
			}
			return
		}
		if len(msgs) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
}

func BenchmarkEnqueue(b *testing.B) {
	const writers = 8
	b.Run("8writers/1KB", func(b *testing.B) {
		// raw: the business insert alone. raw-outbox: plus the insert of a
		// hand-rolled outbox (an id, topic, key and payload, no index but
		// the primary key), the least an outbox writes.
		for _, v := range []struct {
			name    string
			enqueue bool
			cfg     postgres.Config
		}{
			{"raw", false, postgres.Config{}},
			{"raw-outbox", false, postgres.Config{}},
			{"defaults", true, postgres.Config{}},
			{"notifytx", true, postgres.Config{NotifyInTransaction: true}},
		} {
			b.Run(v.name, func(b *testing.B) {
				ctx := context.Background()
				h := newHarness(b, v.cfg)
				biz := pgx.Identifier{testenv.Name(b, "orders")}.Sanitize()
				if _, err := h.pool.Exec(ctx, "CREATE TABLE "+biz+" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, doc bytea NOT NULL)"); err != nil {
					b.Fatal(err)
				}
				handRolled := pgx.Identifier{testenv.Name(b, "hand_outbox")}.Sanitize()
				if _, err := h.pool.Exec(ctx, "CREATE TABLE "+handRolled+
					" (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL, key text NOT NULL, payload bytea NOT NULL)"); err != nil {
					b.Fatal(err)
				}
				payload := make([]byte, 1024)
				_, _ = rand.Read(payload)
				// Warm the writers' connections up.
				var wg sync.WaitGroup
				for range writers {
					wg.Go(func() {
						if _, err := h.pool.Exec(ctx, "SELECT 1"); err != nil {
							b.Error(err)
						}
					})
				}
				wg.Wait()
				var next atomic.Int64
				b.ResetTimer()
				start := time.Now()
				for range writers {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							err := pgx.BeginFunc(ctx, h.pool, func(tx pgx.Tx) error {
								if _, err := tx.Exec(ctx, "INSERT INTO "+biz+" (doc) VALUES ($1)", payload); err != nil {
									return err
								}
								if v.name == "raw-outbox" {
									_, err := tx.Exec(ctx, "INSERT INTO "+handRolled+" (topic, key, payload) VALUES ('orders', $1, $2)",
										"k"+strconv.Itoa(int(next.Load()%benchKeys)), payload)
									return err
								}
								if !v.enqueue {
									return nil
								}
								m := broker.NewMessage("orders", payload)
								m.Key = "k" + strconv.Itoa(int(next.Load()%benchKeys))
								return h.store.Enqueue(ctx, tx, m)
							})
							if err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tx/s")
			})
		}
	})
}
