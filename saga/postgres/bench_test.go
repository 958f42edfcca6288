package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

// BenchmarkSagas: completed 3-step sagas per second on PostgreSQL, from
// the first start to the last completion, with b.N sagas started by 8
// goroutines. Each saga sends a command to three participant services
// (reserve, charge as the pivot, ship), each built with saga.Participant
// on Participants, so every step is an engine transition and a
// participant transaction, and every command and reply goes through the
// outbox and a relay; participants and engine talk over the memory broker
// or Kafka (kfake unless STEADFAST_KAFKA_BROKERS is set).
//
// The raw baseline does the same Postgres writes with pgx and nothing
// else, from as many goroutines: per saga, the start transaction (instance
// row, history, outbox row), and per step a participant transaction
// (record, outbox row) and an engine transaction (instance update with a
// revision check, history, outbox row), then the deletion of the outbox
// rows a relay does. No broker, no relay latency, no JSON of the engine.
//
// "steadfast" runs the outbox relay with its defaults: every enqueue
// notifies the relay, which claims at once, so under load it publishes
// many small batches. "steadfast-wakedelay" sets the relay's WakeDelay to
// 5ms, which gathers the commits of those 5ms into one claim.
func BenchmarkSagas(b *testing.B) {
	for _, br := range []struct {
		name  string
		setup func(testing.TB) sagatest.Broker
	}{
		{"memory-broker", func(testing.TB) sagatest.Broker {
			m := memory.New(memory.Config{})
			return sagatest.Broker{Publisher: m, Subscriber: m}
		}},
		{"kafka", func(t testing.TB) sagatest.Broker { return kafkaBrokerAt(t, testenv.Kafka(t)) }},
	} {
		b.Run(br.name+"/raw", func(b *testing.B) { benchRaw(b) })
		b.Run(br.name+"/steadfast", func(b *testing.B) { benchSagas(b, br.setup(b), 0) })
		b.Run(br.name+"/steadfast-wakedelay", func(b *testing.B) { benchSagas(b, br.setup(b), 5*time.Millisecond) })
	}
}

const benchWorkers = 8

type benchOrder struct {
	ID    string `json:"id"`
	Items int    `json:"items"`
}

// counter is a pgx tracer counting the statements sent and the round
// trips they took (a batch is one round trip).
type counter struct{ stmts, trips atomic.Int64 }

func (c *counter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.stmts.Add(1)
	c.trips.Add(1)
	return ctx
}
func (c *counter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (c *counter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.trips.Add(1)
	return ctx
}
func (c *counter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {
	c.stmts.Add(1)
}
func (c *counter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// measure reports statements, round trips and this process's CPU time
// per saga from now until done is called.
func measure(b *testing.B, c *counter, n int) (done func()) {
	s0, t0, cpu0 := c.stmts.Load(), c.trips.Load(), cpuTime()
	return func() {
		b.ReportMetric(float64(c.stmts.Load()-s0)/float64(n), "stmts/saga")
		b.ReportMetric(float64(c.trips.Load()-t0)/float64(n), "trips/saga")
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(n), "client-cpu-ns/saga")
	}
}

// cpuTime is the user and system CPU time of this process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchSagas(b *testing.B, bk sagatest.Broker, wakeDelay time.Duration) {
	c := &counter{}
	e := newTracedEnv(b, 40, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := fmt.Sprintf("bench%d", time.Now().UnixNano())
	topic := func(s string) string { return prefix + "." + s }
	for _, t := range []struct{ topic, group string }{{topic("inventory"), "inventory"}, {topic("payment"), "payment"},
		{topic("shipping"), "shipping"}, {topic("replies"), "engine"}} {
		if bk.Setup != nil {
			if err := bk.Setup(ctx, t.topic, t.group); err != nil {
				b.Fatal(err)
			}
		}
	}
	e.relayWith(b, bk.Publisher, wakeDelay)
	cmd := func(t string) func(context.Context, *benchOrder) (broker.Message, error) {
		return func(_ context.Context, o *benchOrder) (broker.Message, error) {
			p, err := json.Marshal(o)
			return broker.Message{Topic: topic(t), Payload: p}, err
		}
	}
	def, err := saga.Define("bench-order", 1,
		saga.Step[benchOrder]{Name: "reserve", Command: cmd("inventory"), CompensationCommand: cmd("inventory")},
		saga.Step[benchOrder]{Name: "charge", Kind: saga.Pivot, Command: cmd("payment")},
		saga.Step[benchOrder]{Name: "ship", Kind: saga.Retriable, Command: cmd("shipping")})
	if err != nil {
		b.Fatal(err)
	}
	meter := sagatest.NewMeter()
	eng, err := saga.NewEngine(e.store, saga.Config{ReplyTopic: topic("replies"), Subscriber: bk.Subscriber,
		Group: "engine", Concurrency: 32, Logger: discard, MeterProvider: meter, StatsInterval: -1})
	if err != nil {
		b.Fatal(err)
	}
	if err := eng.Register(def); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				b.Error(err)
			}
		}()
	}
	run(func() error { return eng.Run(ctx) })
	for _, s := range []string{"inventory", "payment", "shipping"} {
		p, err := saga.NewParticipant(e.parts, saga.ParticipantConfig{Name: s, Logger: discard,
			Action: func(context.Context, saga.Tx, saga.Command) ([]byte, error) { return nil, nil }})
		if err != nil {
			b.Fatal(err)
		}
		run(func() error {
			return bk.Subscriber.Subscribe(ctx, broker.Subscription{Topic: topic(s), Group: s, Concurrency: 16}, p.Handle)
		})
	}
	defer wg.Wait()
	defer cancel()
	// Warm up: a few sagas through every path.
	start(b, eng, def, "warm", 20)
	waitCompleted(b, meter, 20)

	b.ResetTimer()
	t0 := time.Now()
	done := measure(b, c, b.N)
	start(b, eng, def, "run", b.N)
	waitCompleted(b, meter, int64(20+b.N))
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "sagas/s")
	done()
}

func start(b *testing.B, eng *saga.Engine, def *saga.Definition[benchOrder], prefix string, n int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				id := fmt.Sprintf("%s-%d", prefix, i)
				if _, err := saga.Start(context.Background(), eng, def, id, benchOrder{ID: id, Items: 3}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func waitCompleted(b *testing.B, m *sagatest.Meter, n int64) {
	deadline := time.Now().Add(5 * time.Minute)
	for m.Count(saga.MetricCompleted) < n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d sagas completed after 5 minutes", m.Count(saga.MetricCompleted), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// benchRaw does the Postgres writes of b.N sagas with pgx alone.
func benchRaw(b *testing.B) {
	c := &counter{}
	e := newTracedEnv(b, 40, c)
	ctx := context.Background()
	insertInstance := `INSERT INTO saga (id, type, version, status, step, step_name, attempt, awaiting, awaiting_since,
timer, timer_at, wake_at, data, seq, revision, created_at, updated_at)
VALUES ($1, 'bench-order', 1, 'running', 0, 'reserve', 1, $2, now(), 'timeout', now() + interval '30s',
        now() + interval '30s', $3, 2, 1, now(), now())`
	insertHistory := `INSERT INTO saga_history (instance_id, seq, at, kind, step, attempt, message_id, detail)
SELECT $1, s, now(), 'event', 'step', 1, NULLIF(m, ''), '' FROM unnest($2::bigint[], $3::text[]) AS u(s, m)`
	insertOutbox := `INSERT INTO outbox (message_id, topic, key, payload, headers, message_time)
VALUES ($1, 'topic', $2, $3, $4, now())`
	loadInstance := `SELECT revision, seq, data FROM saga WHERE id = $1`
	updateInstance := `UPDATE saga SET step = step + 1, attempt = 1, awaiting = $3, seq = seq + 3, revision = revision + 1,
data = $4, updated_at = now(), wake_at = now() + interval '30s' WHERE id = $1 AND revision = $2`
	lockRecord := `SELECT state FROM saga_participant WHERE participant = $1 AND saga_id = $2 AND step = $3 FOR UPDATE`
	insertRecord := `INSERT INTO saga_participant (participant, saga_id, step, state, command) VALUES ($1, $2, $3, 'done', $4)`
	headers := `{"steadfast-saga-id":"x","steadfast-saga-step":"reserve","steadfast-saga-action":"do","correlation-id":"x"}`
	payload := []byte(`{"id":"x","items":3}`)

	one := func(id string) error {
		tx := func(f func(pgx.Tx) error) error { return pgx.BeginFunc(ctx, e.pool, f) }
		if err := tx(func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insertInstance, id, broker.NewID(), payload); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, insertHistory, id, []int64{1, 2}, []string{"", broker.NewID()}); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, insertOutbox, broker.NewID(), id, payload, headers)
			return err
		}); err != nil {
			return err
		}
		for step, name := range []string{"reserve", "charge", "ship"} {
			if err := tx(func(tx pgx.Tx) error {
				var st string
				if err := tx.QueryRow(ctx, lockRecord, name, id, name).Scan(&st); err != pgx.ErrNoRows {
					return fmt.Errorf("record: %v", err)
				}
				if _, err := tx.Exec(ctx, insertRecord, name, id, name, broker.NewID()); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, insertOutbox, broker.NewID(), id, nil, headers)
				return err
			}); err != nil {
				return err
			}
			if err := tx(func(tx pgx.Tx) error {
				var rev, seq int64
				var data []byte
				if err := tx.QueryRow(ctx, loadInstance, id).Scan(&rev, &seq, &data); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, updateInstance, id, rev, broker.NewID(), data); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, insertHistory, id, []int64{seq + 1, seq + 2, seq + 3},
					[]string{broker.NewID(), "", broker.NewID()}); err != nil {
					return err
				}
				if step == 2 {
					return nil
				}
				_, err := tx.Exec(ctx, insertOutbox, broker.NewID(), id, payload, headers)
				return err
			}); err != nil {
				return err
			}
		}
		_, err := e.pool.Exec(ctx, `DELETE FROM outbox WHERE key = $1`, id)
		return err
	}
	b.ResetTimer()
	t0 := time.Now()
	done := measure(b, c, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 3 * benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := one(fmt.Sprintf("raw-%d", i)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "sagas/s")
	done()
}
