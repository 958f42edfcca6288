package kafkadlq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/dlqtest"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// testLogger logs to stderr when STEADFAST_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("STEADFAST_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// subConfig settles consumer groups quickly.
func subConfig(brokers []string) kafka.SubscriberConfig {
	return kafka.SubscriberConfig{
		Config:            kafka.Config{Brokers: brokers, Logger: testLogger()},
		CommitInterval:    200 * time.Millisecond,
		HeartbeatInterval: 300 * time.Millisecond,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  30 * time.Second,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is a Kafka cluster with a publisher and an admin, closed at cleanup.
type env struct {
	brokers []string
	pub     *kafka.Publisher
	admin   *kafka.Admin
}

func newEnv(t *testing.T) *env {
	t.Helper()
	brokers := testenv.Kafka(t)
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: brokers}})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kafka.NewAdmin(kafka.Config{Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = pub.Close()
		admin.Close()
	})
	return &env{brokers: brokers, pub: pub, admin: admin}
}

func (e *env) createTopic(t *testing.T, name string, partitions int32) {
	t.Helper()
	if err := e.admin.CreateTopic(ctxT(t), kafka.TopicSpec{Name: name, Partitions: partitions}); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
}

// consumer creates topic (4 partitions) and a Consumer with its retry and
// dead-letter topics.
func (e *env) consumer(t *testing.T, cfg dlq.Config, topic, group string) *kafkadlq.Consumer {
	t.Helper()
	e.createTopic(t, topic, 4)
	c, err := kafkadlq.NewConsumer(kafkadlq.Config{Subscriber: subConfig(e.brokers), DLQ: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.CreateTopics(ctxT(t), topic, group, kafka.TopicSpec{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e *env) inspector(t *testing.T, topic string, replay broker.Publisher) *kafkadlq.Inspector {
	t.Helper()
	in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{Config: kafka.Config{Brokers: e.brokers, Logger: testLogger()}, Topic: topic, Publisher: replay})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close() })
	return in
}

// TestConformance runs the dlq suite on a Kafka-protocol cluster in every
// retry mode: in process, redelivered in place by the adapter, and
// through retry topics.
func TestConformance(t *testing.T) {
	t.Parallel()
	dlqtest.Run(t, dlqtest.Features{
		Retries:     []dlq.Retries{dlq.RetryRedeliver, dlq.RetryInProcess, dlq.RetryTopics},
		Partitioned: true,
	}, func(t *testing.T) dlqtest.Backend {
		e := newEnv(t)
		return dlqtest.Backend{
			Publisher: e.pub,
			Consumer: func(t *testing.T, cfg dlq.Config, topic, group string) dlqtest.Consumer {
				return e.consumer(t, cfg, topic, group)
			},
			Inspector: func(t *testing.T, topic, group string, replay broker.Publisher) dlq.Inspector {
				return e.inspector(t, dlq.DeadLetterTopic(dlq.Envelope{Topic: topic, Group: group}), replay)
			},
		}
	})
}

// TestRetryTopicWaitsWithoutStalling: on a retry topic, a message due in
// an hour waits at the head of its partition while a message due now on
// another partition is handled at once, and later messages of the waiting
// message's key on the main topic are handled too. The waiting message is
// not handled before its due time.
func TestRetryTopicWaitsWithoutStalling(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	c := e.consumer(t, dlq.Config{Retries: dlq.RetryTopics, Policy: dlq.Policy{MaxAttempts: 3}, MaxWait: 100 * time.Millisecond}, topic, group)
	retry1 := dlq.RetryTopic(topic, group, 1)

	// Two keys on different partitions of the retry topic.
	keyA, keyB := "", ""
	for i := 0; keyB == ""; i++ {
		k := fmt.Sprint("customer-", i)
		switch p := kafka.KeyPartition(k, 4); {
		case keyA == "":
			keyA = k
		case p != kafka.KeyPartition(keyA, 4):
			keyB = k
		}
	}
	retryMsg := func(key string, due time.Time) broker.Message {
		m := broker.NewMessage(retry1, []byte("retry "+key))
		m.Key = key
		m.Headers = map[string]string{}
		now := time.Now()
		dlq.Envelope{ID: m.ID, Topic: topic, Key: key, Time: now, Group: group, Partition: 0, Offset: 0,
			Error: "boom", Attempts: 1, FirstFailure: now, LastFailure: now, Due: due}.SetHeaders(m.Headers)
		return m
	}
	late := retryMsg(keyA, time.Now().Add(time.Hour))
	soon := retryMsg(keyB, time.Now())
	if err := e.pub.Publish(ctxT(t), late, soon); err != nil {
		t.Fatal(err)
	}
	next := broker.NewMessage(topic, []byte("next of key A"))
	next.Key = keyA
	if err := e.pub.Publish(ctxT(t), next); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	seen := map[string][]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			seen[d.ID] = append(seen[d.ID], d.Attempt)
			mu.Unlock()
			return nil
		})
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		n := len(seen[soon.ID]) + len(seen[next.ID])
		mu.Unlock()
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the due retry and the main-topic message were not handled: the waiting message stalls them")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let the retry consumer hand the waiting message back a few times.
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := seen[late.ID]; len(got) != 0 {
		t.Errorf("message due in an hour was handled: attempts %v", got)
	}
	if got := seen[soon.ID]; !slices.Equal(got, []int{2}) {
		t.Errorf("due retry handled with attempts %v, want [2]", got)
	}
}

// TestInspectorMarkersAndDeletion: replaying and purging a selection
// appends markers so the dead letters are no longer listed, and deletes
// the partition prefix that holds nothing pending; purging all deletes
// every record.
func TestInspectorMarkersAndDeletion(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, dead := testenv.Name(t, "orders"), testenv.Name(t, "dead")
	e.createTopic(t, topic, 1)
	e.createTopic(t, dead, 1)
	var ids []string
	for i := range 4 {
		m := broker.NewMessage(dead, []byte(fmt.Sprint(i)))
		m.Headers = map[string]string{}
		now := time.Now()
		dlq.Envelope{ID: m.ID, Topic: topic, Time: m.Time, Group: "g", Partition: 0, Offset: int64(i), Error: "boom",
			Attempts: 3, FirstFailure: now, LastFailure: now}.SetHeaders(m.Headers)
		if err := e.pub.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	in := e.inspector(t, dead, nil)
	ctx := ctxT(t)
	if n, err := in.Replay(ctx, dlq.Filter{IDs: ids[:1]}, dlq.ReplayOptions{}); n != 1 || err != nil {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if n, err := in.Purge(ctx, dlq.Filter{IDs: ids[2:3]}); n != 1 || err != nil {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	dls, err := in.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || dls[0].ID() != ids[1] || dls[1].ID() != ids[3] {
		t.Fatalf("listed %d dead letters after a replay and a purge", len(dls))
	}
	if dls[0].Position != "0/1" {
		t.Errorf("position %q, want 0/1", dls[0].Position)
	}
	lag, err := e.admin.Lag(ctx, dead, "nobody")
	if err != nil {
		t.Fatal(err)
	}
	if lag[0].Start != 1 {
		t.Errorf("log start offset %d, want 1 (the replayed prefix deleted)", lag[0].Start)
	}
	if n, err := in.Purge(ctx, dlq.Filter{}); n != 2 || err != nil {
		t.Fatalf("Purge all = %d, %v", n, err)
	}
	if lag, err = e.admin.Lag(ctx, dead, "nobody"); err != nil || lag[0].Start != lag[0].End {
		t.Errorf("after purging all: %+v, %v", lag, err)
	}
	// The replayed message reached the original topic.
	lag, err = e.admin.Lag(ctx, topic, "nobody")
	if err != nil || lag[0].End != 1 {
		t.Errorf("original topic: %+v, %v", lag, err)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	if _, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{Config: kafka.Config{Brokers: []string{"localhost:9092"}}}); !errors.Is(err, dlq.ErrInvalidConfig) {
		t.Errorf("inspector without topic: %v", err)
	}
	if _, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{Topic: "t"}); !errors.Is(err, dlq.ErrInvalidConfig) {
		t.Errorf("inspector without brokers: %v", err)
	}
	if _, err := kafkadlq.NewConsumer(kafkadlq.Config{}); err == nil {
		t.Error("consumer without brokers accepted")
	}
	if _, err := kafkadlq.NewConsumer(kafkadlq.Config{Subscriber: kafka.SubscriberConfig{Config: kafka.Config{Brokers: []string{"localhost:9092"}}},
		DLQ: dlq.Config{Policy: dlq.Policy{MaxAttempts: -1}}}); !errors.Is(err, dlq.ErrInvalidConfig) {
		t.Errorf("bad policy: %v", err)
	}
}

// TestInspectorUnknownTopic: on a dead-letter topic that does not exist,
// the Inspector's errors match dlq.ErrNotFound (the dlq.Inspector
// contract) and kafka.ErrUnknownTopic (as the adapter reports it).
func TestInspectorUnknownTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	in := e.inspector(t, testenv.Name(t, "missing"), nil)
	ctx := ctxT(t)
	_, errList := in.List(ctx, dlq.Filter{})
	_, errReplay := in.Replay(ctx, dlq.Filter{}, dlq.ReplayOptions{})
	_, errPurge := in.Purge(ctx, dlq.Filter{})
	for op, err := range map[string]error{"List": errList, "Replay": errReplay, "Purge": errPurge} {
		if !errors.Is(err, dlq.ErrNotFound) || !errors.Is(err, kafka.ErrUnknownTopic) {
			t.Errorf("%s of a missing topic: %v, want dlq.ErrNotFound and kafka.ErrUnknownTopic", op, err)
		}
	}
}

// TestInspectorReadsTransactionalTopic: dead letters written in Kafka
// transactions (a kafka.Pipeline sending failures to the dead-letter
// topic) are listed when committed and not when aborted, and the
// transaction markers at the end of the log do not stall the reading.
func TestInspectorReadsTransactionalTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dead := testenv.Name(t, "dead")
	e.createTopic(t, dead, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.TransactionalID(testenv.Name(t, "tx")),
		kgo.DefaultProduceTopic(dead))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := ctxT(t)
	write := func(commit bool, ids ...string) {
		t.Helper()
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			h := map[string]string{}
			now := time.Now()
			dlq.Envelope{ID: id, Topic: "orders", Group: "g", Partition: -1, Offset: -1, Error: "boom", Attempts: 1,
				FirstFailure: now, LastFailure: now}.SetHeaders(h)
			r := &kgo.Record{Value: []byte(id), Headers: []kgo.RecordHeader{{Key: kafka.HeaderID, Value: []byte(id)}}}
			for k, v := range h {
				r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
			}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	write(true, "a", "b")
	write(false, "x")
	in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{Config: kafka.Config{Brokers: e.brokers}, Topic: dead, IdleTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dls, err := in.List(ctx, dlq.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, dl := range dls {
		ids = append(ids, dl.ID())
	}
	if !slices.Equal(ids, []string{"a", "b"}) {
		t.Errorf("listed %v, want [a b]", ids)
	}
}

// countingPublisher counts the messages it forwards to Next (or drops, when
// Next is nil).
type countingPublisher struct {
	Next broker.Publisher
	n    atomic.Int64
}

func (p *countingPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	p.n.Add(int64(len(msgs)))
	if p.Next == nil {
		return nil
	}
	return p.Next.Publish(ctx, msgs...)
}

// TestPublisherPrecedence: Config.Publisher, when set, publishes the dead
// letters even when DLQ.Publisher is set too (the rule rabbitdlq follows);
// DLQ.Publisher is used when Config.Publisher is nil.
func TestPublisherPrecedence(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, c := range []struct {
		name             string
		top, dlq         bool
		wantTop, wantDLQ int64
	}{
		{"both", true, true, 1, 0},
		{"dlq only", false, true, 0, 1},
	} {
		topic, group := testenv.Name(t, "t"), testenv.Name(t, "g")
		top, inner := &countingPublisher{Next: e.pub}, &countingPublisher{Next: e.pub}
		cfg := kafkadlq.Config{Subscriber: subConfig(e.brokers), DLQ: dlq.Config{Retries: dlq.RetryInProcess}}
		if c.top {
			cfg.Publisher = top
		}
		if c.dlq {
			cfg.DLQ.Publisher = inner
		}
		e.createTopic(t, topic, 1)
		cons, err := kafkadlq.NewConsumer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := cons.CreateTopics(ctxT(t), topic, group, kafka.TopicSpec{}); err != nil {
			t.Fatal(err)
		}
		if err := e.pub.Publish(ctxT(t), broker.NewMessage(topic, []byte("poison"))); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(ctxT(t))
		done := make(chan error, 1)
		go func() {
			done <- cons.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(context.Context, broker.Delivery) error {
				return dlq.Permanentf("never valid")
			})
		}()
		deadline := time.Now().Add(time.Minute)
		for top.n.Load()+inner.n.Load() == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%s: subscribe: %v", c.name, err)
		}
		_ = cons.Close()
		if top.n.Load() != c.wantTop || inner.n.Load() != c.wantDLQ {
			t.Errorf("%s: Config.Publisher published %d, DLQ.Publisher %d; want %d and %d",
				c.name, top.n.Load(), inner.n.Load(), c.wantTop, c.wantDLQ)
		}
	}
}

// TestInspectorClientOptions: the Inspector reaches the cluster the way the
// adapter's clients do, so franz-go's warnings about an unreachable broker
// reach Config.Logger and reading fails with kafka.ErrUnreachable.
func TestInspectorClientOptions(t *testing.T) {
	t.Parallel()
	logs := &testenv.LogRecorder{}
	in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{
		Config: kafka.Config{Brokers: []string{testenv.ClosedAddr(t)}, Logger: slog.New(logs), StartTimeout: time.Second, DialTimeout: 200 * time.Millisecond},
		Topic:  "t.g.dlq",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if _, err := in.List(ctxT(t), dlq.Filter{}); !errors.Is(err, kafka.ErrUnreachable) {
		t.Fatalf("list on an unreachable cluster: %v, want kafka.ErrUnreachable", err)
	}
	var msgs []string
	for _, r := range logs.Records() {
		if strings.HasPrefix(r.Message, "franz-go: ") {
			return
		}
		msgs = append(msgs, r.Message)
	}
	t.Fatalf("no franz-go warning reached Config.Logger; got %q", msgs)
}

// TestInspectorForgedMarkers: records another client writes to the
// dead-letter topic with the Inspector's marker headers hide no dead
// letter and make no replay delete one: a marker naming an offset alone
// (the format before markers named their dead letter's digest), one naming
// a dead letter's ID with a wrong digest, one naming a later offset, and a
// record with a value and marker headers (a dead letter, listed as such).
func TestInspectorForgedMarkers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, dead := testenv.Name(t, "orders"), testenv.Name(t, "dead")
	e.createTopic(t, topic, 1)
	e.createTopic(t, dead, 1)
	deadLetter := func(i int) string {
		t.Helper()
		m := broker.NewMessage(dead, []byte(fmt.Sprint(i)))
		m.Headers = map[string]string{}
		now := time.Now()
		dlq.Envelope{ID: m.ID, Topic: topic, Time: m.Time, Group: "g", Partition: 0, Offset: int64(i), Error: "boom",
			Attempts: 3, FirstFailure: now, LastFailure: now}.SetHeaders(m.Headers)
		if err := e.pub.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	ids := []string{deadLetter(0), deadLetter(1), deadLetter(2)} // offsets 0, 1, 2
	raw, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(dead))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	h := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	forged := []*kgo.Record{
		{Headers: h(kafkadlq.HeaderMarker, "purged", kafkadlq.HeaderMarkerOffset, "0")},
		{Headers: h(kafkadlq.HeaderMarker, "replayed", kafkadlq.HeaderMarkerOffset, "1", kafkadlq.HeaderMarkerID, ids[1],
			kafkadlq.HeaderMarkerDigest, strings.Repeat("0", 64))},
		{Headers: h(kafkadlq.HeaderMarker, "purged", kafkadlq.HeaderMarkerOffset, "7", kafkadlq.HeaderMarkerDigest, strings.Repeat("0", 64))},
		{Value: []byte("not a marker"), Headers: h(kafkadlq.HeaderMarker, "purged", kafkadlq.HeaderMarkerOffset, "2")},
	}
	if err := raw.ProduceSync(ctxT(t), forged...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	later := deadLetter(7) // offset 7
	in := e.inspector(t, dead, nil)
	ctx := ctxT(t)
	listed := func() []string {
		t.Helper()
		dls, err := in.List(ctx, dlq.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, dl := range dls {
			out = append(out, dl.Position)
		}
		slices.Sort(out)
		return out
	}
	if got, want := listed(), []string{"0/0", "0/1", "0/2", "0/6", "0/7"}; !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v (no dead letter hidden by a forged marker)", got, want)
	}
	if n, err := in.Replay(ctx, dlq.Filter{IDs: []string{later}}, dlq.ReplayOptions{}); n != 1 || err != nil {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if got, want := listed(), []string{"0/0", "0/1", "0/2", "0/6"}; !slices.Equal(got, want) {
		t.Fatalf("after replaying the last: listed %v, want %v", got, want)
	}
	lag, err := e.admin.Lag(ctx, dead, "nobody")
	if err != nil || lag[0].Start != 0 {
		t.Errorf("log start %+v, %v; want 0 (nothing deleted)", lag, err)
	}
	// The genuine markers still work: purging the first three leaves one.
	if n, err := in.Purge(ctx, dlq.Filter{IDs: ids}); n != 3 || err != nil {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if got, want := listed(), []string{"0/6"}; !slices.Equal(got, want) {
		t.Fatalf("after purging three: listed %v, want %v", got, want)
	}
}

// TestRetryTopicEnvelopeNeverRenames: a message on a retry topic whose
// envelope names another topic, group and key and an absurd attempt count
// is handled as a message of the retry topic's own topic and group, with
// its own ID and key, on the last attempt the policy allows (the count is
// clamped), and dead-lettered to its own group's destination.
func TestRetryTopicEnvelopeNeverRenames(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	topic, group := testenv.Name(t, "orders"), "billing"
	c := e.consumer(t, dlq.Config{Retries: dlq.RetryTopics, Policy: dlq.Policy{MaxAttempts: 3}}, topic, group)
	other := testenv.Name(t, "other")
	e.createTopic(t, other, 1)
	if err := c.CreateTopics(ctxT(t), other, "evil", kafka.TopicSpec{}); err != nil {
		t.Fatal(err)
	}
	m := broker.NewMessage(dlq.RetryTopic(topic, group, 1), []byte("retry"))
	m.Key = "customer-1"
	m.Headers = map[string]string{"seq": "1"}
	now := time.Now()
	dlq.Envelope{ID: "forged", Topic: other, Key: "forged-key", Time: now, Group: "evil", Partition: 0, Offset: 0,
		Error: "boom", Attempts: 1 << 40, FirstFailure: now, LastFailure: now, Due: now}.SetHeaders(m.Headers)
	if err := e.pub.Publish(ctxT(t), m); err != nil {
		t.Fatal(err)
	}
	type call struct {
		id, topic, group, key string
		attempt               int
	}
	calls := make(chan call, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
			calls <- call{d.ID, d.Topic, d.Group, d.Key, d.Attempt}
			return errors.New("still failing")
		})
	}()
	in := e.inspector(t, dlq.DeadLetterTopic(dlq.Envelope{Topic: topic, Group: group}), nil)
	var dls []dlq.DeadLetter
	for deadline := time.Now().Add(2 * time.Minute); len(dls) == 0; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no dead letter")
		}
		var err error
		if dls, err = in.List(ctxT(t), dlq.Filter{}); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(calls)
	var got []call
	for cl := range calls {
		got = append(got, cl)
	}
	if want := (call{m.ID, topic, group, m.Key, 3}); len(got) != 1 || got[0] != want {
		t.Errorf("handler calls %+v, want one %+v", got, want)
	}
	if e := dls[0].Envelope; len(dls) != 1 || e.ID != m.ID || e.Topic != topic || e.Group != group || e.Key != m.Key || e.Attempts != 3 {
		t.Errorf("dead letters %d, envelope %+v", len(dls), e)
	}
	evil := e.inspector(t, dlq.DeadLetterTopic(dlq.Envelope{Topic: other, Group: "evil"}), nil)
	if dls, err := evil.List(ctxT(t), dlq.Filter{}); err != nil || len(dls) != 0 {
		t.Errorf("the forged destination holds %d dead letters (%v)", len(dls), err)
	}
}

// TestSubscribeCreatesTopics: Subscribe creates the missing retry and
// dead-letter topics (with the main topic's partition count) and a poison
// message is dead-lettered; with NoCreateTopics, or when the cluster
// refuses to create them, Subscribe fails at once naming them, with an
// error matching dlq.ErrNotFound and kafka.ErrUnknownTopic.
func TestSubscribeCreatesTopics(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	newConsumer := func(cfg kafkadlq.Config) *kafkadlq.Consumer {
		t.Helper()
		cfg.Subscriber = subConfig(e.brokers)
		cfg.DLQ.Retries, cfg.DLQ.Policy = dlq.RetryTopics, dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Millisecond}}
		c, err := kafkadlq.NewConsumer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	fail := func(context.Context, broker.Delivery) error { return errors.New("poison") }

	t.Run("NoCreateTopics", func(t *testing.T) {
		topic := testenv.Name(t, "orders")
		e.createTopic(t, topic, 2)
		c := newConsumer(kafkadlq.Config{NoCreateTopics: true})
		err := c.Subscribe(ctxT(t), broker.Subscription{Topic: topic, Group: "g"}, fail)
		if !errors.Is(err, dlq.ErrNotFound) || !errors.Is(err, kafka.ErrUnknownTopic) || !strings.Contains(err.Error(), topic+".g.dlq") {
			t.Fatalf("Subscribe = %v, want ErrNotFound and ErrUnknownTopic naming the dead-letter topic", err)
		}
		if _, err := e.admin.Partitions(ctxT(t), topic+".g.dlq"); !errors.Is(err, kafka.ErrUnknownTopic) {
			t.Errorf("dead-letter topic created anyway: %v", err)
		}
	})
	t.Run("CreationRefused", func(t *testing.T) {
		topic := testenv.Name(t, "orders")
		e.createTopic(t, topic, 2)
		c := newConsumer(kafkadlq.Config{TopicSpec: kafka.TopicSpec{ReplicationFactor: 100}}) // more replicas than brokers
		err := c.Subscribe(ctxT(t), broker.Subscription{Topic: topic, Group: "g"}, fail)
		if !errors.Is(err, dlq.ErrNotFound) || !strings.Contains(err.Error(), "could not be created") {
			t.Fatalf("Subscribe = %v, want ErrNotFound: could not be created", err)
		}
	})
	t.Run("Create", func(t *testing.T) {
		topic := testenv.Name(t, "orders")
		e.createTopic(t, topic, 3)
		c := newConsumer(kafkadlq.Config{})
		m := broker.NewMessage(topic, []byte("poison"))
		if err := e.pub.Publish(ctxT(t), m); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Subscribe(ctx, broker.Subscription{Topic: topic, Group: "g"}, fail) }()
		in := e.inspector(t, topic+".g.dlq", nil)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			dls, err := in.List(ctxT(t), dlq.Filter{})
			if err == nil && len(dls) == 1 && dls[0].ID() == m.ID {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no dead letter: %d listed, %v", len(dls), err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for _, name := range c.Topics(topic, "g") {
			if n, err := e.admin.Partitions(ctxT(t), name); err != nil || n != 3 {
				t.Errorf("topic %s: %d partitions, %v; want 3", name, n, err)
			}
		}
	})
}
