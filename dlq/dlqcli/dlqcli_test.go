package dlqcli_test

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
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/dlqcli"
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
	code := dlqcli.Run(ctxT(t), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// listed is what the tests read of a -json line.
type listed struct {
	ID             string            `json:"id"`
	Key            string            `json:"key"`
	Error          string            `json:"error"`
	Time           time.Time         `json:"time"`
	DeadLetteredAt time.Time         `json:"dead_lettered_at"`
	Headers        map[string]string `json:"headers"`
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
			var j listed
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
		{append([]string{"list"}, k...), "name the dead-letter destination"},
		{append([]string{"list", "-dlq", "d", "-topic", "t", "-group", "g"}, k...), "not both"},
		{append([]string{"list", "-dlq", "d", "-from", "yesterday"}, k...), "RFC 3339"},
		{append([]string{"list", "-dlq", "d", "-from", "2025-03-02T00:00:00Z", "-to", "2025-03-01T00:00:00Z"}, k...), "not after"},
		{append([]string{"list", "-dlq", "d", "-limit", "-1"}, k...), "-limit"},
		{append([]string{"purge", "-dlq", "d"}, k...), "needs -all"},
		{append([]string{"purge", "-dlq", "d", "-all", "-id", "x"}, k...), "cannot be combined"},
		{append([]string{"list", "-dlq", "d", "-to-topic", "x"}, k...), "not defined: -to-topic"},
		{append([]string{"purge", "-dlq", "d", "-all", "-json"}, k...), "not defined: -json"},
		{append([]string{"list", "-dlq", "d", "extra"}, k...), "unexpected arguments"},
		{[]string{"list", "-broker", "rabbitmq", "-url", "http://x", "-dlq", "d"}, "invalid config"},
	}
	for _, c := range cases {
		code, _, errOut := runCLI(t, c.args...)
		if code != dlqcli.ExitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("steadfast-dlq %v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
	if code, _, _ := runCLI(t, "list", "-h"); code != dlqcli.ExitOK {
		t.Errorf("list -h: exit %d", code)
	}
	if code, _, errOut := runCLI(t, "list", "-dlq", "d", "-timeout", "5s", "-broker", "kafka", "-brokers", "127.0.0.1:1"); code != dlqcli.ExitFail || errOut == "" {
		t.Errorf("unreachable broker: exit %d, %q", code, errOut)
	}
}

// TestHelpListsEveryFlag: each command's -h names the command, says what
// it does and lists every flag it takes, and no flag it does not take;
// it never prints a URL from the environment.
func TestHelpListsEveryFlag(t *testing.T) {
	t.Parallel()
	common := []string{"broker", "brokers", "url", "dlq", "topic", "group", "timeout", "id", "from", "to", "limit"}
	own := map[string][]string{"list": {"json"}, "peek": {"json"}, "replay": {"all", "to-topic"}, "purge": {"all"}}
	all := []string{"json", "all", "to-topic"}
	for cmd, flags := range own {
		code, out, errOut := runCLI(t, cmd, "-h")
		if code != dlqcli.ExitOK || out != "" || !strings.Contains(errOut, "usage: steadfast-dlq "+cmd) {
			t.Errorf("%s -h: exit %d, stdout %q, stderr %q", cmd, code, out, errOut)
		}
		for _, f := range append(slices.Clone(common), flags...) {
			if !strings.Contains(errOut, "\n  -"+f+" ") && !strings.Contains(errOut, "\n  -"+f+"\n") {
				t.Errorf("%s -h does not list -%s:\n%s", cmd, f, errOut)
			}
		}
		for _, f := range all {
			if !slices.Contains(flags, f) && strings.Contains(errOut, "\n  -"+f) {
				t.Errorf("%s -h lists -%s, which it does not take", cmd, f)
			}
		}
		if strings.Contains(errOut, "amqp://guest") || !strings.Contains(errOut, "$"+dlqcli.EnvRabbitMQURL) || !strings.Contains(errOut, "$"+dlqcli.EnvKafkaBrokers) {
			t.Errorf("%s -h: the URL defaults are not named, or a URL is printed:\n%s", cmd, errOut)
		}
	}
	for _, args := range [][]string{{"-h"}, {"help"}} {
		if code, _, errOut := runCLI(t, args...); code != dlqcli.ExitOK || !strings.Contains(errOut, "replay") {
			t.Errorf("%v: exit %d, %q", args, code, errOut)
		}
	}
}

// TestEnvironmentDefaults: -url and -brokers default to
// STEADFAST_RABBITMQ_URL and STEADFAST_KAFKA_BROKERS; without either the
// command says which to pass or set. (Not parallel: it sets variables.)
func TestEnvironmentDefaults(t *testing.T) {
	url := testenv.RabbitMQURL(t)
	brokers := testenv.Kafka(t)
	t.Setenv(dlqcli.EnvRabbitMQURL, "")
	t.Setenv(dlqcli.EnvKafkaBrokers, "")
	if code, _, errOut := runCLI(t, "list", "-broker", "rabbitmq", "-dlq", "d"); code != dlqcli.ExitUsage || !strings.Contains(errOut, "-url is required with -broker rabbitmq (or set STEADFAST_RABBITMQ_URL)") {
		t.Errorf("rabbitmq without a URL: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, "list", "-broker", "kafka", "-dlq", "d"); code != dlqcli.ExitUsage || !strings.Contains(errOut, "-brokers is required with -broker kafka (or set STEADFAST_KAFKA_BROKERS)") {
		t.Errorf("kafka without brokers: exit %d, %q", code, errOut)
	}
	t.Setenv(dlqcli.EnvRabbitMQURL, url)
	t.Setenv(dlqcli.EnvKafkaBrokers, strings.Join(brokers, ","))
	// Missing destinations: the brokers were reached, so the variables
	// were used.
	for _, b := range []string{"rabbitmq", "kafka"} {
		code, _, errOut := runCLI(t, "list", "-broker", b, "-dlq", testenv.Name(t, "missing"))
		if code != dlqcli.ExitFail || !strings.Contains(errOut, "not found") {
			t.Errorf("%s from the environment: exit %d, %q; want 1 and not found", b, code, errOut)
		}
	}
}

// TestHostileDeadLetters: what a dead letter carries reaches the terminal
// escaped (control characters, C1 controls, bidi overrides, bytes that are
// not UTF-8, in IDs, keys, errors, header names and values, payloads);
// peek and list -json show the original message's time, apart from the
// time the dead letter was written; peek of an ID that is not there exits 1
// naming it.
func TestHostileDeadLetters(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	cfg := kafka.Config{Brokers: brokers}
	admin, err := kafka.NewAdmin(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	dest := testenv.Name(t, "dead")
	if err := admin.CreateTopic(ctxT(t), kafka.TopicSpec{Name: dest, Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const evil = "a\x1b[2J\x1b]0;pwned\x07\u009b31m\u202eb\r\nc\xff"
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	m := broker.NewMessage(dest, []byte(evil))
	m.ID, m.Key = "id-"+evil, "key-"+evil
	m.Headers = map[string]string{"h-" + evil: "v-" + evil}
	now := time.Now()
	dlq.Envelope{ID: m.ID, Topic: "orders", Key: m.Key, Time: created, Group: "g-" + evil, Handler: "charge", Partition: 0, Offset: 3,
		Error: "boom " + evil, Attempts: 2, FirstFailure: now, LastFailure: now}.SetHeaders(m.Headers)
	if err := pub.Publish(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
	conn := []string{"-broker", "kafka", "-brokers", strings.Join(brokers, ","), "-dlq", dest}
	raw := func(out string) bool {
		for _, r := range out {
			if r == 0x1b || r == 0x07 || r == '\r' || r == 0x9b || r == 0x202e || r == utf8.RuneError {
				return true
			}
		}
		return !utf8.ValidString(out)
	}
	for _, cmd := range [][]string{{"list"}, {"peek"}, {"list", "-json"}, {"peek", "-json"}} {
		code, out, errOut := runCLI(t, append(cmd, conn...)...)
		if code != dlqcli.ExitOK {
			t.Fatalf("%v: exit %d, %s", cmd, code, errOut)
		}
		if raw(out) {
			t.Errorf("%v prints control characters raw:\n%q", cmd, out)
		}
		t.Logf("%v:\n%s", cmd, out)
		switch strings.Join(cmd, " ") {
		case "peek":
			for _, want := range []string{`id-a\x1b[2J\x1b]0;pwned\a\u009b31m\u202eb\r\nc\xff`, "message time:  2025-03-01T12:00:00.000Z",
				`h-a\x1b[2J`, `boom a\x1b`, "payload (", "base64"} {
				if !strings.Contains(out, want) {
					t.Errorf("peek output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "dead-lettered: 2025") {
				t.Errorf("peek shows the original time as the dead letter's:\n%s", out)
			}
		case "list -json":
			var j listed
			if err := json.Unmarshal([]byte(out), &j); err != nil {
				t.Fatal(err)
			}
			if !j.Time.Equal(created) || j.DeadLetteredAt.Before(now.Add(-time.Minute)) {
				t.Errorf("list -json: time %v, dead_lettered_at %v; want %v and about %v", j.Time, j.DeadLetteredAt, created, now)
			}
			if j.ID != strings.ToValidUTF8(m.ID, "\uFFFD") || j.Headers["h-"+evil] == "" && j.Headers[strings.ToValidUTF8("h-"+evil, "\uFFFD")] == "" {
				t.Errorf("list -json does not decode to the dead letter: %+v", j)
			}
		}
	}
	code, out, errOut := runCLI(t, append([]string{"peek", "-id", "nosuch"}, conn...)...)
	if code != dlqcli.ExitFail || !strings.Contains(errOut, `no dead letter with ID "nosuch" in `+dest) || !strings.Contains(out, "0 dead letters") {
		t.Errorf("peek -id nosuch: exit %d, stdout %q, stderr %q; want 1 and a message naming it", code, out, errOut)
	}
	code, _, errOut = runCLI(t, append([]string{"peek", "-id", "nosuch,id-" + evil}, conn...)...)
	if code != dlqcli.ExitFail || !strings.Contains(errOut, `"nosuch"`) || strings.Contains(errOut, "pwned\x07") || raw(errOut) {
		t.Errorf("peek of one found and one missing ID: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, append([]string{"replay", "-id", "nosuch"}, conn...)...); code != dlqcli.ExitFail || !strings.Contains(errOut, `"nosuch"`) {
		t.Errorf("replay -id nosuch: exit %d, %q", code, errOut)
	}
}
