package postgres_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"

	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/outbox"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/postgres"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

// Environment of the engine process TestKillEngineProcess starts: the test
// binary re-executed with these set runs engineProcess instead of tests.
const (
	envChild    = "STEADFAST_SAGA_TEST_ENGINE"
	envChildDB  = "STEADFAST_SAGA_TEST_DB"
	envChildMQ  = "STEADFAST_SAGA_TEST_AMQP"
	envChildOut = "STEADFAST_SAGA_TEST_OUTBOX_CHANNEL"
	envChildCh  = "STEADFAST_SAGA_TEST_SAGA_CHANNEL"
)

func TestMain(m *testing.M) {
	if prefix := os.Getenv(envChild); prefix != "" {
		if err := engineProcess(prefix); err != nil {
			fmt.Fprintln(os.Stderr, "engine process:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(testenv.MainWithExamples(m, "postgres", "Example_wiring"))
}

// engineProcess runs an engine and an outbox relay on the test's database
// and RabbitMQ, on the order flow of topic prefix, until it is killed.
func engineProcess(prefix string) error {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(envChildDB))
	if err != nil {
		return err
	}
	out, err := outboxpg.New(pool, outboxpg.Config{Table: "outbox", Channel: os.Getenv(envChildOut)})
	if err != nil {
		return err
	}
	store, err := postgres.New(pool, postgres.Config{Outbox: out, Channel: os.Getenv(envChildCh)})
	if err != nil {
		return err
	}
	conn, err := rabbitmq.Dial(ctx, rabbitmq.Config{URL: os.Getenv(envChildMQ), Name: "saga-engine-process"})
	if err != nil {
		return err
	}
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{})
	if err != nil {
		return err
	}
	sub, err := rabbitmq.NewSubscriber(conn, rabbitmq.SubscriberConfig{})
	if err != nil {
		return err
	}
	relay, err := outbox.NewRelay(out, pub, outbox.Config{PollInterval: 50 * time.Millisecond, Logger: discard, DeletePublished: true})
	if err != nil {
		return err
	}
	def, err := sagatest.OrderDefinition(func(s string) string { return prefix + "_" + s }, sagatest.OrderOptions{})
	if err != nil {
		return err
	}
	eng, err := saga.NewEngine(store, saga.Config{Subscriber: sub, ReplyTopic: prefix + "_replies", Group: "engine",
		PollInterval: 50 * time.Millisecond, Logger: discard})
	if err != nil {
		return err
	}
	if err := eng.Register(def); err != nil {
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- relay.Run(ctx) }()
	go func() { errc <- eng.Run(ctx) }()
	fmt.Println("ready")
	return <-errc
}

// TestKillEngineProcess runs the orchestrator in a separate OS process and
// SIGKILLs it five times in the middle of its work while 100 orders flow (participants and a
// second relay stay up in this process, as other services would): the
// killed process's transaction in flight is rolled back by PostgreSQL, its
// unacknowledged replies go back to RabbitMQ, its outbox claim is released;
// every instance must still complete or compensate exactly once, with the
// exact history.
func TestKillEngineProcess(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 10)
	rabbit := rabbitBroker(t)
	h := sagatest.NewHarness(t, sagatest.Features{Logger: discard, Timeout: 3 * time.Minute},
		func(*testing.T, broker.Publisher) sagatest.Stores {
			return sagatest.Stores{Store: e.store, Participants: e.parts, Flows: e.flows}
		},
		func(*testing.T) sagatest.Broker { return rabbit })
	h.Setup(h.Topic("replies"), "engine")
	e.relay(t, rabbit.Publisher)
	h.StartParticipants(nil)
	def := h.OrderDef(sagatest.OrderOptions{})
	starter, err := saga.NewEngine(e.store, saga.Config{ReplyTopic: h.Topic("replies"), Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	if err := starter.Register(def); err != nil {
		t.Fatal(err)
	}
	ids := h.StartOrders(starter, def, "kill", 100)

	spawn := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"="+h.Prefix, envChildDB+"="+e.url, envChildMQ+"="+rabbitURL(t),
			envChildOut+"="+e.out.Channel(), envChildCh+"="+e.store.Channel())
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if strings.TrimSpace(sc.Text()) == "ready" {
					ready <- true
				}
			}
			ready <- false
		}()
		select {
		case ok := <-ready:
			if !ok {
				_ = cmd.Wait()
				t.Fatalf("engine process exited before it was ready")
			}
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Fatalf("engine process not ready after a minute")
		}
		return cmd
	}
	progress := func() int64 {
		var n int64
		if err := e.pool.QueryRow(context.Background(), `SELECT coalesce(sum(seq), 0) FROM saga`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	const kills = 5
	for i := range kills {
		base := progress()
		cmd := spawn()
		// Kill it in the middle of the work: once it recorded a random
		// number of history events.
		target := base + int64(30+rand.IntN(220))
		for deadline := time.Now().Add(time.Minute); progress() < target && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = cmd.Wait()
		n := 0
		for _, id := range ids {
			if in, err := e.store.Get(context.Background(), id); err == nil && in.Status.Finished() {
				n++
			}
		}
		t.Logf("engine process %d killed (%s) with %d of %d instances finished", i+1, cmd.ProcessState, n, len(ids))
	}
	last := spawn()
	got := h.WaitFinished(e.store, ids, false)
	_ = last.Process.Signal(syscall.SIGKILL)
	_ = last.Wait()
	completed, compensated := h.CheckOrders(e.store, got)
	if compensated != 10 || completed != 90 {
		t.Errorf("completed %d, compensated %d; want 90 and 10", completed, compensated)
	}
}

func rabbitURL(t *testing.T) string { return testenv.RabbitMQURL(t) }
