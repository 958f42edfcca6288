package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/postgres"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

func TestSchemaAndNames(t *testing.T) {
	ddl, err := postgres.Schema("billing.saga")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`CREATE TABLE IF NOT EXISTS "billing"."saga" (`, `CREATE TABLE IF NOT EXISTS "billing"."saga_history" (`,
		`CREATE INDEX IF NOT EXISTS "saga_wake" ON "billing"."saga" (wake_at)`,
		`CREATE UNIQUE INDEX IF NOT EXISTS "saga_history_message" ON "billing"."saga_history" (instance_id, message_id)`} {
		if !strings.Contains(ddl, want) {
			t.Errorf("schema lacks %q", want)
		}
	}
	for _, f := range []func(string) (string, error){postgres.Schema, postgres.ParticipantSchema, postgres.FlowSchema} {
		for _, bad := range []string{"Saga", "saga; DROP TABLE users", "a.b.c", strings.Repeat("s", 60), "sa\x00ga", "1saga"} {
			_, err := f(bad)
			if !errors.Is(err, postgres.ErrInvalidTable) || !strings.HasPrefix(err.Error(), "saga/postgres: ") {
				t.Errorf("table %q: %v; want ErrInvalidTable from saga/postgres", bad, err)
			}
		}
	}
	e := newEnv(t, 2)
	if _, err := postgres.New(nil, postgres.Config{Outbox: e.out}); !errors.Is(err, postgres.ErrInvalidConfig) || !errors.Is(err, saga.ErrInvalidConfig) {
		t.Errorf("nil pool: %v", err)
	}
	if _, err := postgres.New(e.pool, postgres.Config{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("nil outbox: %v", err)
	}
	if _, err := postgres.New(e.pool, postgres.Config{Outbox: e.out, Channel: strings.Repeat("c", 64)}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("long channel: %v", err)
	}
	if _, err := postgres.NewParticipants(e.pool, postgres.ParticipantsConfig{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("participants without outbox: %v", err)
	}
	if _, err := postgres.NewFlows(nil, postgres.FlowsConfig{}); !errors.Is(err, postgres.ErrInvalidConfig) {
		t.Errorf("flows without pool: %v", err)
	}
	s, err := postgres.New(e.pool, postgres.Config{Outbox: e.out, Table: "a_very_long_but_valid_schema.saga_instances_table"})
	if err != nil || s.Table() != "a_very_long_but_valid_schema.saga_instances_table" || len(s.Channel()) > 63 {
		t.Errorf("long names: %v %q %q", err, s.Table(), s.Channel())
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 8)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				err = postgres.Migrate(ctx, e.pool, "other_saga")
			case 1:
				err = postgres.MigrateParticipants(ctx, e.pool, "other_participant")
			default:
				err = postgres.MigrateFlows(ctx, e.pool, "other_flow")
			}
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var n int
	if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename IN
		('other_saga', 'other_saga_history', 'other_participant', 'other_flow', 'other_flow_event')
		AND schemaname = current_schema()`).Scan(&n); err != nil || n != 5 {
		t.Errorf("tables created: %d, %v", n, err)
	}
}

// TestLocalStepsInTheTransaction: local steps write business rows through
// TxOf; they commit exactly once with the transition, even with two
// engines deciding every transition at once, and a failed attempt's rows
// are rolled back.
func TestLocalStepsInTheTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 16)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, status text NOT NULL);
		CREATE TABLE audit (order_id text NOT NULL, what text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	exec := func(ctx context.Context, tx saga.Tx, sql string, args ...any) error {
		ptx := postgres.TxOf(tx)
		if ptx == nil {
			return errors.New("not a postgres transaction")
		}
		_, err := ptx.Exec(ctx, sql, args...)
		return err
	}
	attempts := sync.Map{}
	h := sagatest.NewHarness(t, sagatest.Features{Logger: discard}, func(t *testing.T, pub broker.Publisher) sagatest.Stores {
		e.relay(t, pub)
		return sagatest.Stores{Store: e.store, Participants: e.parts, Flows: e.flows}
	}, sagatest.MemoryBroker)
	paymentCmd := func(_ context.Context, o *sagatest.Order) (broker.Message, error) {
		return broker.Message{Topic: h.Topic("payment"), Payload: fmt.Appendf(nil, `{"id":%q,"refuse":%v}`, o.ID, o.Refuse)}, nil
	}
	def, err := saga.Define("local-order", 1,
		saga.Step[sagatest.Order]{Name: "create-order",
			Action: func(ctx context.Context, tx saga.Tx, o *sagatest.Order) error {
				return exec(ctx, tx, `INSERT INTO orders VALUES ($1, 'pending')`, o.ID)
			},
			Compensation: func(ctx context.Context, tx saga.Tx, o *sagatest.Order) error {
				return exec(ctx, tx, `UPDATE orders SET status = 'cancelled' WHERE id = $1`, o.ID)
			}},
		saga.Step[sagatest.Order]{Name: "charge-payment", Kind: saga.Pivot, Command: paymentCmd},
		saga.Step[sagatest.Order]{Name: "confirm", Kind: saga.Retriable,
			Retry: saga.Retry{MaxAttempts: 3, Backoff: broker.ConstantBackoff(10 * time.Millisecond)},
			Action: func(ctx context.Context, tx saga.Tx, o *sagatest.Order) error {
				if err := exec(ctx, tx, `INSERT INTO audit VALUES ($1, 'confirm attempt')`, o.ID); err != nil {
					return err
				}
				// Attempts may run on either engine: count atomically.
				n, _ := attempts.LoadOrStore(o.ID, new(atomic.Int32))
				if n.(*atomic.Int32).Add(1) == 1 {
					return errors.New("first attempt fails after writing")
				}
				return exec(ctx, tx, `UPDATE orders SET status = 'confirmed' WHERE id = $1`, o.ID)
			}})
	if err != nil {
		t.Fatal(err)
	}
	h.StartParticipants(nil)
	engA, _ := h.StartEngine(sagatest.EngineOptions{Defs: []saga.AnyDefinition{def}, Group: "a"})
	h.StartEngine(sagatest.EngineOptions{Defs: []saga.AnyDefinition{def}, Group: "b"})
	var ids []string
	for i := range 40 {
		id := fmt.Sprintf("loc-%d", i)
		ids = append(ids, id)
		if _, err := saga.Start(ctx, engA, def, id, sagatest.Order{ID: id, Refuse: i%4 == 3}); err != nil {
			t.Fatal(err)
		}
	}
	got := h.WaitFinished(e.store, ids, false)
	for i, id := range ids {
		var status string
		var audits int
		if err := e.pool.QueryRow(ctx, `SELECT o.status, (SELECT count(*) FROM audit a WHERE a.order_id = o.id)
			FROM orders o WHERE o.id = $1`, id).Scan(&status, &audits); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		want, wantAudits, wantStatus := saga.StatusCompleted, 1, "confirmed"
		if i%4 == 3 {
			want, wantAudits, wantStatus = saga.StatusCompensated, 0, "cancelled"
		}
		if got[id].Status != want || status != wantStatus || audits != wantAudits {
			t.Errorf("%s: saga %s, order %s, %d audit rows; want %s, %s, %d", id, got[id].Status, status, audits, want, wantStatus, wantAudits)
		}
	}
}

// TestParticipantWritesInItsTransaction: a participant's business rows,
// its record and its reply commit together; a refusal keeps none of its
// rows.
func TestParticipantWritesInItsTransaction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 4)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `CREATE TABLE stock (saga_id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	p, err := saga.NewParticipant(e.parts, saga.ParticipantConfig{Name: "inventory", Logger: discard,
		Action: func(ctx context.Context, tx saga.Tx, c saga.Command) ([]byte, error) {
			if _, err := postgres.TxOf(tx).Exec(ctx, `INSERT INTO stock VALUES ($1)`, c.SagaID); err != nil {
				return nil, err
			}
			if strings.HasPrefix(c.SagaID, "refuse") {
				return nil, saga.Refusef("no stock")
			}
			return []byte("ok"), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := func(id string) broker.Delivery {
		m := broker.NewMessage("inventory", nil)
		m.Headers = map[string]string{saga.HeaderSagaID: id, saga.HeaderStep: "reserve", saga.HeaderAction: saga.ActionDo,
			saga.HeaderAttempt: "1", saga.HeaderReplyTo: "replies"}
		return broker.Delivery{Message: m}
	}
	for _, id := range []string{"ok-1", "refuse-1"} {
		d := cmd(id)
		for range 2 {
			if err := p.Handle(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	rows := func(sql string, args ...any) int {
		var n int
		if err := e.pool.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := rows(`SELECT count(*) FROM stock WHERE saga_id = 'ok-1'`); n != 1 {
		t.Errorf("ok-1: %d stock rows, want 1", n)
	}
	if n := rows(`SELECT count(*) FROM stock WHERE saga_id = 'refuse-1'`); n != 0 {
		t.Errorf("refuse-1: the refused action's row was kept")
	}
	if n := rows(`SELECT count(*) FROM outbox WHERE topic = 'replies'`); n != 4 {
		t.Errorf("%d replies in the outbox, want 4", n)
	}
	rec, err := e.parts.Record(ctx, saga.ParticipantKey{Participant: "inventory", SagaID: "refuse-1", Step: "reserve"})
	if err != nil || rec.State != saga.ParticipantRefused || rec.Reason != "no stock" {
		t.Errorf("refusal record %+v, %v", rec, err)
	}
	if n, err := e.parts.Cleanup(ctx, time.Now().Add(time.Hour), 10); err != nil || n != 2 {
		t.Errorf("cleanup: %d, %v", n, err)
	}
}

// TestHostileData: instance data and replies carrying NUL characters,
// invalid UTF-8 and megabytes are stored and read back, never a database
// error.
func TestHostileData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 8)
	h := sagatest.NewHarness(t, sagatest.Features{Logger: discard}, func(t *testing.T, pub broker.Publisher) sagatest.Stores {
		e.relay(t, pub)
		return sagatest.Stores{Store: e.store, Participants: e.parts, Flows: e.flows}
	}, sagatest.MemoryBroker)
	type note struct{ Note string }
	def, err := saga.Define("notes", 1, saga.Step[note]{Name: "keep", Action: func(context.Context, saga.Tx, *note) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	eng, _ := h.StartEngine(sagatest.EngineOptions{Defs: []saga.AnyDefinition{def}})
	ctx := context.Background()
	weird := "nul\x00 bad\xff utf8 " + strings.Repeat("☃", 1<<16)
	if _, err := saga.Start(ctx, eng, def, "weird-1", note{Note: weird}); err != nil {
		t.Fatal(err)
	}
	in := h.WaitStatus(e.store, "weird-1", saga.StatusCompleted)
	if !strings.Contains(string(in.Data), `nul\u0000 bad`+"\uFFFD utf8") || len(in.Data) < 3<<16 {
		t.Errorf("data not kept: %.80s", in.Data)
	}
	// A reply with a hostile failure reason for a finished instance is
	// recorded (cut, cleaned) without a database error.
	m := broker.NewMessage(h.Topic("replies"), nil)
	m.Headers = map[string]string{saga.HeaderSagaID: "weird-1", saga.HeaderStep: "ship", saga.HeaderAction: "do",
		saga.HeaderCommand: "c\x00", saga.HeaderOutcome: "failure", saga.HeaderReason: weird}
	if err := eng.HandleReply(ctx, broker.Delivery{Message: m}); err != nil {
		t.Errorf("hostile reply: %v", err)
	}
	evs, err := e.store.History(ctx, "weird-1", 0, 0)
	if err != nil || evs[len(evs)-1].Kind != saga.EventReplyIgnored {
		t.Errorf("hostile reply not recorded: %v", err)
	}
}

// TestNotifyWakesEngines: engines that poll once an hour still act at once
// on an operator request from another process and on their own short
// timers: LISTEN/NOTIFY and local wake-ups, not polling.
func TestNotifyWakesEngines(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 8)
	ctx := context.Background()
	h := sagatest.NewHarness(t, sagatest.Features{Logger: discard, Timeout: 2 * time.Minute}, func(t *testing.T, pub broker.Publisher) sagatest.Stores {
		e.relay(t, pub)
		return sagatest.Stores{Store: e.store, Participants: e.parts, Flows: e.flows}
	}, sagatest.MemoryBroker)
	def := h.OrderDef(sagatest.OrderOptions{StepTimeout: 200 * time.Millisecond, Retry: saga.Retry{MaxAttempts: 2}})
	held := make(chan broker.Delivery, 4)
	h.StartParticipants(&sagatest.Faults{Hold: map[string]chan broker.Delivery{"n-1/inventory": held, "n-2/payment": held}})
	eng, err := saga.NewEngine(e.store, saga.Config{ReplyTopic: h.Topic("replies"), PollInterval: time.Hour, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(def); err != nil {
		t.Fatal(err)
	}
	h.Setup(h.Topic("replies"), "engine")
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = eng.Run(runCtx) }()
	go func() {
		_ = h.Broker.Subscriber.Subscribe(runCtx, broker.Subscription{Topic: h.Topic("replies"), Group: "engine"}, eng.HandleReply)
	}()
	// Timers: n-1's reply never comes; two 200ms timeouts, then
	// compensation.
	if _, err := saga.Start(ctx, eng, def, "n-1", sagatest.Order{ID: "n-1"}); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(e.store, "n-1", saga.StatusCompensated)
	// A request recorded through another pool (another process).
	if _, err := saga.Start(ctx, eng, def, "n-2", sagatest.Order{ID: "n-2"}); err != nil {
		t.Fatal(err)
	}
	other, err := postgres.New(openPool(t, e.url, 2), postgres.Config{Outbox: e.out, Channel: e.store.Channel()})
	if err != nil {
		t.Fatal(err)
	}
	h.Eventually("n-2 to await payment", func() bool {
		in, err := other.Get(ctx, "n-2")
		return err == nil && in.StepName == "charge-payment"
	})
	// The payment command is held, and the pivot in flight defers a
	// cancel: skip it with a parked instance instead. Wait for the
	// pivot's timeouts to park it (outcome unknown), then cancel: abort.
	h.WaitStatus(e.store, "n-2", saga.StatusParked)
	if _, err := other.Request(ctx, "n-2", saga.Request{Kind: saga.RequestCancel, Reason: "from another process"}); err != nil {
		t.Fatal(err)
	}
	h.WaitStatus(e.store, "n-2", saga.StatusAborted)
}
