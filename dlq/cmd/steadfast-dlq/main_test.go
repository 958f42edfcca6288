package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// runCLI runs the command in process and returns its exit status and
// output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(ctxT(t), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// subscriber is what the scenario runs the handler on.
type subscriber interface {
	Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error
}

// scenario drives list, peek, replay and purge through the command
// against one broker: conn are the broker flags, c a dlq consumer of
// topic/group whose dead letters go to the default destination.
func scenario(t *testing.T, conn []string, pub broker.Publisher, c subscriber, topic, group string) {
	cli := func(wantCode int, args ...string) string {
		t.Helper()
		code, out, errOut := runCLI(t, append(args, conn...)...)
		if code != wantCode {
			t.Fatalf("steadfast-dlq %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, code, wantCode, out, errOut)
		}
		return out + errOut
	}
	where := []string{"-topic", topic, "-group", group}
	listIDs := func() []string {
		t.Helper()
		out := cli(0, append([]string{"list", "-json"}, where...)...)
		var ids []string
		for line := range strings.Lines(out) {
			var j jsonDeadLetter
			if err := json.Unmarshal([]byte(line), &j); err != nil {
				t.Fatalf("list -json line %q: %v", line, err)
			}
			ids = append(ids, j.ID)
		}
		return ids
	}
	waitIDs := func(n int) []string {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			ids := listIDs()
			if len(ids) == n {
				return ids
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d dead letters listed, want %d", len(ids), n)
			}
		}
	}

	var fixed atomic.Bool
	var mu sync.Mutex
	handled := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			p := string(d.Payload)
			if strings.HasPrefix(p, "garbage") || (strings.HasPrefix(p, "bad") && !fixed.Load()) {
				return dlq.Permanent(fmt.Errorf("decode %q: invalid", p))
			}
			mu.Lock()
			handled[d.ID]++
			mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Subscribe: %v", err)
		}
	})
	waitHandled := func(ids ...string) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			n := 0
			for _, id := range ids {
				n += handled[id]
			}
			mu.Unlock()
			if n == len(ids) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d messages handled", n, len(ids))
			}
		}
	}

	var bad []broker.Message
	for i := range 3 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint("bad ", i)))
		m.Key = fmt.Sprint("k", i)
		m.Headers = map[string]string{"type": "OrderPlaced"}
		bad = append(bad, m)
	}
	good := broker.NewMessage(topic, []byte("good"))
	if err := pub.Publish(ctxT(t), append(bad, good)...); err != nil {
		t.Fatal(err)
	}
	waitHandled(good.ID)
	ids := waitIDs(3)
	for _, m := range bad {
		if !slices.Contains(ids, m.ID) {
			t.Fatalf("dead letters %v lack %s", ids, m.ID)
		}
	}

	out := cli(0, append([]string{"list"}, where...)...)
	t.Logf("steadfast-dlq list:\n%s", out)
	if !strings.Contains(out, "3 dead letters in "+topic+"."+group+".dlq") || !strings.Contains(out, bad[1].ID) || !strings.Contains(out, "permanent") {
		t.Errorf("list output:\n%s", out)
	}
	out = cli(0, append([]string{"peek", "-id", bad[1].ID}, where...)...)
	t.Logf("steadfast-dlq peek:\n%s", out)
	if !strings.Contains(out, "bad 1") || !strings.Contains(out, `decode "bad 1": invalid`) || !strings.Contains(out, "type: OrderPlaced") ||
		!strings.Contains(out, "1 dead letters") {
		t.Errorf("peek output:\n%s", out)
	}
	// Replaying or purging everything needs -all.
	cli(2, append([]string{"replay"}, where...)...)
	cli(2, append([]string{"purge"}, where...)...)

	fixed.Store(true)
	out = cli(0, append([]string{"replay", "-id", bad[0].ID}, where...)...)
	if !strings.Contains(out, "replayed 1 dead letters") {
		t.Errorf("replay output: %s", out)
	}
	waitHandled(bad[0].ID)
	out = cli(0, append([]string{"replay", "-all"}, where...)...)
	if !strings.Contains(out, "replayed 2 dead letters") {
		t.Errorf("replay -all output: %s", out)
	}
	waitHandled(bad[0].ID, bad[1].ID, bad[2].ID)
	if ids := listIDs(); len(ids) != 0 {
		t.Errorf("dead letters left after replay: %v", ids)
	}

	g1, g2 := broker.NewMessage(topic, []byte("garbage 1")), broker.NewMessage(topic, []byte("garbage 2"))
	if err := pub.Publish(ctxT(t), g1, g2); err != nil {
		t.Fatal(err)
	}
	waitIDs(2)
	if out := cli(0, append([]string{"purge", "-id", g1.ID}, where...)...); !strings.Contains(out, "purged 1 dead letters") {
		t.Errorf("purge output: %s", out)
	}
	if ids := listIDs(); !slices.Equal(ids, []string{g2.ID}) {
		t.Errorf("after purging one: %v", ids)
	}
	if out := cli(0, append([]string{"purge", "-all"}, where...)...); !strings.Contains(out, "purged 1 dead letters") {
		t.Errorf("purge -all output: %s", out)
	}
	if ids := listIDs(); len(ids) != 0 {
		t.Errorf("after purging all: %v", ids)
	}
	mu.Lock()
	if handled[g1.ID]+handled[g2.ID] != 0 {
		t.Error("purged messages were handled")
	}
	mu.Unlock()

	// A destination that does not exist is an operation failure.
	if out := cli(1, "list", "-dlq", testenv.Name(t, "missing")); !strings.Contains(out, "not found") {
		t.Errorf("missing destination output: %s", out)
	}
}

func TestKafka(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	cfg := kafka.Config{Brokers: brokers}
	admin, err := kafka.NewAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.CreateTopic(ctxT(t), kafka.TopicSpec{Name: topic, Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	c, err := kafkadlq.NewConsumer(kafkadlq.Config{Subscriber: kafka.SubscriberConfig{Config: cfg, HeartbeatInterval: 300 * time.Millisecond},
		Publisher: pub, DLQ: dlq.Config{Retries: dlq.RetryRedeliver}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.CreateTopics(ctxT(t), topic, group, kafka.TopicSpec{}); err != nil {
		t.Fatal(err)
	}
	scenario(t, []string{"-broker", "kafka", "-brokers", strings.Join(brokers, ",")}, pub, c, topic, group)
}

func TestRabbitMQ(t *testing.T) {
	t.Parallel()
	url := testenv.RabbitMQURL(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	conn, err := rabbitmq.Dial(ctxT(t), rabbitmq.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	c, err := rabbitdlq.NewConsumer(rabbitdlq.Config{Conn: conn, Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	topo, err := c.Topology(topic, group)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = conn.Delete(ctx, topo)
	})
	if err := c.Setup(ctxT(t), topic, group); err != nil {
		t.Fatal(err)
	}
	scenario(t, []string{"-broker", "rabbitmq", "-url", url}, pub, c, topic, group)
}

// TestUsage: command-line mistakes exit with status 2 and say what is
// wrong, before any broker is contacted.
func TestUsage(t *testing.T) {
	t.Parallel()
	k := []string{"-broker", "kafka", "-brokers", "127.0.0.1:1"}
	cases := []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"drop"}, "unknown command"},
		{[]string{"list", "-dlq", "d"}, "-broker must be"},
		{[]string{"list", "-broker", "kafka", "-dlq", "d"}, "-brokers is required"},
		{[]string{"list", "-broker", "rabbitmq", "-dlq", "d"}, "-url is required"},
		{append([]string{"list"}, k...), "name the dead-letter destination"},
		{append([]string{"list", "-dlq", "d", "-topic", "t", "-group", "g"}, k...), "not both"},
		{append([]string{"list", "-dlq", "d", "-from", "yesterday"}, k...), "RFC 3339"},
		{append([]string{"list", "-dlq", "d", "-from", "2025-03-02T00:00:00Z", "-to", "2025-03-01T00:00:00Z"}, k...), "not after"},
		{append([]string{"list", "-dlq", "d", "-limit", "-1"}, k...), "-limit"},
		{append([]string{"purge", "-dlq", "d"}, k...), "needs -all"},
		{append([]string{"purge", "-dlq", "d", "-all", "-id", "x"}, k...), "cannot be combined"},
		{append([]string{"list", "-dlq", "d", "-to-topic", "x"}, k...), "replay flag"},
		{append([]string{"purge", "-dlq", "d", "-all", "-json"}, k...), "list and peek"},
		{append([]string{"list", "-dlq", "d", "extra"}, k...), "unexpected arguments"},
		{[]string{"list", "-broker", "rabbitmq", "-url", "http://x", "-dlq", "d"}, "invalid config"},
	}
	for _, c := range cases {
		code, _, errOut := runCLI(t, c.args...)
		if code != exitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("steadfast-dlq %v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if code, _, _ := runCLI(t, "list", "-h"); code != exitOK {
		t.Errorf("list -h: exit %d", code)
	}
	if code, _, errOut := runCLI(t, "list", "-dlq", "d", "-timeout", "5s", "-broker", "kafka", "-brokers", "127.0.0.1:1"); code != exitFail || errOut == "" {
		t.Errorf("unreachable broker: exit %d, %q", code, errOut)
	}
}
