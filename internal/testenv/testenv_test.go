package testenv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

func TestName(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("VeryLongSubtestName/", 10)
	cases := []struct{ prefix, sub string }{
		{"pg", "simple"},
		{"", "empty prefix"},
		{"9lives", "digit prefix"},
		{"Outbox-Relay.Topic", "mixed case prefix"},
		{strings.Repeat("p", 80), "huge prefix"},
		{"q", long},
		{"q", "ÜñîçødéΣ !@#$%^&*()"},
	}
	for _, c := range cases {
		t.Run(c.sub, func(t *testing.T) {
			seen := map[string]bool{}
			for range 100 {
				n := testenv.Name(t, c.prefix)
				if len(n) > 48 || !nameRE.MatchString(n) {
					t.Fatalf("Name(%q) = %q: want <= 48 chars of [a-z0-9_] starting with a letter", c.prefix, n)
				}
				if strings.Contains(n, "__") || strings.HasSuffix(n, "_") {
					t.Fatalf("Name(%q) = %q: doubled or trailing underscore", c.prefix, n)
				}
				if seen[n] {
					t.Fatalf("Name(%q) returned %q twice", c.prefix, n)
				}
				seen[n] = true
			}
		})
	}
	if n := testenv.Name(t, "pg"); !strings.HasPrefix(n, "pg_name_") {
		t.Errorf("Name(t, pg) = %q, want prefix pg_name_ (prefix, then the test name)", n)
	}
}

func TestPostgres(t *testing.T) {
	t.Parallel()
	pool, url, schema := testenv.PostgresDB(t)
	if got := testenv.PostgresSchema(url); got != schema {
		t.Errorf("PostgresSchema(url) = %q, want %q", got, schema)
	}
	ctx := context.Background()
	var current string
	if err := pool.QueryRow(ctx, "SELECT current_schema()").Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != schema {
		t.Fatalf("current_schema() = %q, want the test schema %q", current, schema)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO items VALUES (1, 'one'), (2, 'two')"); err != nil {
		t.Fatal(err)
	}
	// A plain pgx connection from the URL lands in the same schema.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT v FROM items WHERE id = 2").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v != "two" {
		t.Fatalf("got %q, want two", v)
	}
	if testenv.Postgres(t) == pool {
		t.Fatal("Postgres returned the same pool twice")
	}
}

// TestPostgresIsolation proves two tests get different schemas: both create
// the same table and see only their own rows, and the schemas are dropped at
// cleanup.
func TestPostgresIsolation(t *testing.T) {
	t.Parallel()
	observer := testenv.Postgres(t)
	var mu sync.Mutex
	var schemas []string
	t.Run("group", func(t *testing.T) {
		for i := range 2 {
			t.Run(fmt.Sprint("test", i), func(t *testing.T) {
				t.Parallel()
				pool, _, schema := testenv.PostgresDB(t)
				mu.Lock()
				schemas = append(schemas, schema)
				mu.Unlock()
				ctx := context.Background()
				if _, err := pool.Exec(ctx, "CREATE TABLE items (v int)"); err != nil {
					t.Fatal(err)
				}
				if _, err := pool.Exec(ctx, "INSERT INTO items VALUES ($1)", i); err != nil {
					t.Fatal(err)
				}
				var n, v int
				if err := pool.QueryRow(ctx, "SELECT count(*), max(v) FROM items").Scan(&n, &v); err != nil {
					t.Fatal(err)
				}
				if n != 1 || v != i {
					t.Fatalf("table items holds %d rows (max %d), want only this test's row %d", n, v, i)
				}
			})
		}
	})
	if len(schemas) != 2 || schemas[0] == schemas[1] {
		t.Fatalf("schemas = %q, want two different ones", schemas)
	}
	var left int
	err := observer.QueryRow(context.Background(),
		"SELECT count(*) FROM pg_namespace WHERE nspname = ANY($1)", schemas).Scan(&left)
	if err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("%d of the schemas %q still exist after their tests' cleanup", left, schemas)
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	var prefix string
	t.Run("use", func(t *testing.T) {
		client, p := testenv.Redis(t)
		prefix = p
		ctx := context.Background()
		if !strings.HasSuffix(prefix, ":") || !nameRE.MatchString(strings.TrimSuffix(prefix, ":")) {
			t.Fatalf("prefix %q: want a Name followed by ':'", prefix)
		}
		for i := range 3 {
			if err := client.Set(ctx, fmt.Sprint(prefix, "k", i), "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		got, err := client.Get(ctx, prefix+"k1").Result()
		if err != nil || got != "v" {
			t.Fatalf("GET = %q, %v; want v", got, err)
		}
	})
	// The keys are gone after the subtest's cleanup.
	opts, err := redis.ParseURL(testenv.RedisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opts)
	defer client.Close()
	keys, err := client.Keys(context.Background(), prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Fatalf("keys %q survived the cleanup", keys)
	}
}

func TestRabbitMQ(t *testing.T) {
	t.Parallel()
	conn, err := amqp.Dial(testenv.RabbitMQURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	queue := testenv.Name(t, "q")
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer ch.QueueDelete(queue, false, false, false)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false,
		amqp.Publishing{ContentType: "text/plain", Body: []byte("hello"), DeliveryMode: amqp.Persistent})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := conf.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publisher confirm: ack=%v err=%v", ok, err)
	}
	msg, ok, err := ch.Get(queue, false)
	if err != nil || !ok {
		t.Fatalf("basic.get: ok=%v err=%v", ok, err)
	}
	if string(msg.Body) != "hello" {
		t.Fatalf("body = %q, want hello", msg.Body)
	}
	if err := msg.Ack(false); err != nil {
		t.Fatal(err)
	}
}

// TestRestartRabbitMQ restarts the shared node from a subtest while its
// parent holds a lease (set aside, not deadlocked on) and a sibling holds
// another (waited for: the sibling never sees the restart). Connections
// opened before the restart are closed, durable queues and persistent
// messages survive it, and new connections work once it returns.
func TestRestartRabbitMQ(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	t.Run("sibling", func(t *testing.T) {
		t.Parallel()
		conn, err := amqp.Dial(testenv.RabbitMQURL(t))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		select {
		case err := <-closed:
			t.Fatalf("the node restarted while this test held a lease: %v", err)
		case <-time.After(2 * time.Second):
		}
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("channel after 2s: %v", err)
		}
		ch.Close()
	})
	t.Run("restarter", func(t *testing.T) {
		t.Parallel()
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		queue := testenv.Name(t, "q")
		if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
		if err := ch.Confirm(false); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false,
			amqp.Publishing{Body: []byte("survivor"), DeliveryMode: amqp.Persistent})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := conf.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publisher confirm: ack=%v err=%v", ok, err)
		}

		start := time.Now()
		testenv.RestartRabbitMQ(t)
		t.Logf("restart, waiting for the sibling included, took %v", time.Since(start).Round(time.Millisecond))

		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatal("the connection opened before the restart is still open")
		}
		conn2, err := amqp.Dial(url)
		if err != nil {
			t.Fatalf("dial after restart: %v", err)
		}
		defer conn2.Close()
		ch2, err := conn2.Channel()
		if err != nil {
			t.Fatal(err)
		}
		defer ch2.QueueDelete(queue, false, false, false)
		msg, ok, err := ch2.Get(queue, true)
		if err != nil || !ok || string(msg.Body) != "survivor" {
			t.Fatalf("after restart basic.get = %q ok=%v err=%v; want the persistent message", msg.Body, ok, err)
		}
	})
}

func TestKafka(t *testing.T) {
	t.Parallel()
	seeds := testenv.Kafka(t)
	if c := testenv.KafkaCluster(t); c == nil {
		t.Fatal("KafkaCluster is nil")
	} else if os.Getenv(testenv.EnvKafkaBrokers) == "" && strings.Join(c.ListenAddrs(), ",") != strings.Join(seeds, ",") {
		t.Fatalf("KafkaCluster listens on %v, Kafka(t) gave %v", c.ListenAddrs(), seeds)
	}
	topic := testenv.Name(t, "topic")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := kadm.NewClient(admin).CreateTopic(ctx, 3, 1, nil, topic); err != nil {
		t.Fatal(err)
	}

	producer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.RequiredAcks(kgo.AllISRAcks()))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	rec := &kgo.Record{Topic: topic, Key: []byte("k"), Value: []byte("hello kafka")}
	if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}

	consumer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.ConsumerGroup(testenv.Name(t, "g")), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	got := pollOne(ctx, t, consumer)
	if string(got.Key) != "k" || string(got.Value) != "hello kafka" || got.Partition != rec.Partition {
		t.Fatalf("consumed %q=%q from partition %d, want k=hello kafka from %d", got.Key, got.Value, got.Partition, rec.Partition)
	}
	if err := consumer.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKafkaTransactions checks the Kafka backend supports transactional
// producers and read_committed consumers (the outbox relay relies on them).
func TestKafkaTransactions(t *testing.T) {
	t.Parallel()
	seeds := testenv.Kafka(t)
	topic := testenv.Name(t, "topic")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	producer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.TransactionalID(testenv.Name(t, "txn")),
		kgo.AllowAutoTopicCreation(), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	for i, commit := range []bool{false, true} {
		if err := producer.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprint("txn", i)
		if err := producer.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := producer.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	if got := pollOne(ctx, t, consumer); string(got.Value) != "txn1" {
		t.Fatalf("read_committed consumer got %q first, want the committed txn1 (txn0 was aborted)", got.Value)
	}
}

func pollOne(ctx context.Context, t *testing.T, c *kgo.Client) *kgo.Record {
	t.Helper()
	for {
		fetches := c.PollRecords(ctx, 1)
		if err := ctx.Err(); err != nil {
			t.Fatalf("no record before the deadline: %v", err)
		}
		for _, e := range fetches.Errors() {
			t.Fatalf("fetch %s[%d]: %v", e.Topic, e.Partition, e.Err)
		}
		if recs := fetches.Records(); len(recs) > 0 {
			return recs[0]
		}
	}
}

// fakeTB records what Unavailable does instead of stopping a goroutine.
type fakeTB struct {
	testing.TB // nil: calling anything not overridden panics
	skipped    string
	failed     string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Name() string                      { return "TestFake" }
func (f *fakeTB) Skip(args ...any)                  { f.skipped = fmt.Sprint(args...) }
func (f *fakeTB) Fatalf(format string, args ...any) { f.failed = fmt.Sprintf(format, args...) }

func TestUnavailableMessage(t *testing.T) {
	t.Parallel()
	for backend, env := range map[string]string{
		"postgres": "STEADFAST_POSTGRES_URL",
		"redis":    "STEADFAST_REDIS_URL",
		"rabbitmq": "STEADFAST_RABBITMQ_URL",
		"kafka":    "STEADFAST_KAFKA_BROKERS",
	} {
		f := &fakeTB{}
		testenv.Unavailable(f, backend, "the reason")
		msg := f.skipped
		if testenv.Require() {
			msg = f.failed
			if f.skipped != "" || f.failed == "" {
				t.Fatalf("%s: with %s=1 Unavailable must fail, not skip (skipped=%q)", backend, testenv.EnvRequire, f.skipped)
			}
		} else if f.failed != "" || f.skipped == "" {
			t.Fatalf("%s: without %s Unavailable must skip, not fail (failed=%q)", backend, testenv.EnvRequire, f.failed)
		}
		for _, want := range []string{backend, "the reason", "make test", env} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: message %q does not mention %q", backend, msg, want)
			}
		}
	}
}

// TestUnavailableHelper is run by TestUnavailable in a child process.
func TestUnavailableHelper(t *testing.T) {
	if os.Getenv("STEADFAST_TESTENV_HELPER") != "1" {
		t.Skip("helper for TestUnavailable")
	}
	testenv.Unavailable(t, "postgres", "helper reason")
	t.Error("Unavailable returned")
}

// TestUnavailable runs a real test through Unavailable in a child process:
// it must be skipped (exit 0) normally and fail (exit 1) under
// STEADFAST_REQUIRE_BACKENDS=1.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "js" || runtime.GOOS == "wasip1" {
		t.Skip("no subprocesses")
	}
	for _, require := range []string{"0", "1"} {
		t.Run("require="+require, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0], "-test.run=^TestUnavailableHelper$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), "STEADFAST_TESTENV_HELPER=1", testenv.EnvRequire+"="+require)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			var exit *exec.ExitError
			switch {
			case require == "0" && err != nil:
				t.Fatalf("child failed (%v), want a skip:\n%s", err, out.String())
			case require == "0" && !strings.Contains(out.String(), "--- SKIP: TestUnavailableHelper"):
				t.Fatalf("child did not skip:\n%s", out.String())
			case require == "1" && !errors.As(err, &exit):
				t.Fatalf("child exited with %v, want a test failure:\n%s", err, out.String())
			case require == "1" && !strings.Contains(out.String(), "--- FAIL: TestUnavailableHelper"):
				t.Fatalf("child did not fail:\n%s", out.String())
			}
			for _, want := range []string{"postgres unavailable: helper reason", "make test", "STEADFAST_POSTGRES_URL"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("child output does not mention %q:\n%s", want, out.String())
				}
			}
			if strings.Contains(out.String(), "Unavailable returned") {
				t.Errorf("Unavailable returned instead of ending the test:\n%s", out.String())
			}
		})
	}
}

func BenchmarkName(b *testing.B) {
	for b.Loop() {
		_ = testenv.Name(b, "topic")
	}
}

// BenchmarkKafkaCluster measures what Kafka(t) costs per test with the
// in-process cluster: start a 3-broker kfake cluster, read its addresses,
// close it.
func BenchmarkKafkaCluster(b *testing.B) {
	if os.Getenv(testenv.EnvKafkaBrokers) != "" {
		b.Skip("STEADFAST_KAFKA_BROKERS is set: no in-process cluster")
	}
	for b.Loop() {
		c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.AllowAutoTopicCreation())
		if err != nil {
			b.Fatal(err)
		}
		_ = c.ListenAddrs()
		c.Close()
	}
}
