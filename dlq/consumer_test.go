package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/dlqtest"
)

// fastPolicy retries quickly so tests do not wait.
var fastPolicy = dlq.Policy{MaxAttempts: 4, Backoff: broker.Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond}}

// liveness bounds every wait in these tests; it only fires when something
// is stuck.
const liveness = time.Minute

// start runs c.Subscribe (or b.Subscribe with the middleware when c is nil)
// in the background and returns a function that stops it and returns its
// result.
func start(t *testing.T, run func(ctx context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(liveness):
				err = errors.New("subscription did not stop")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitFor polls cond until it holds, failing the test after liveness.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(liveness)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// calls records handler invocations per message ID.
type calls struct {
	mu       sync.Mutex
	attempts map[string][]int
	at       map[string][]time.Time
	order    map[string][]string // key -> IDs in processing order (successes)
}

func newCalls() *calls {
	return &calls{attempts: map[string][]int{}, at: map[string][]time.Time{}, order: map[string][]string{}}
}

func (c *calls) record(d broker.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.attempts[d.ID] = append(c.attempts[d.ID], d.Attempt)
	c.at[d.ID] = append(c.at[d.ID], time.Now().Round(0)) // wall clock: due times are wall-clock instants
}

func (c *calls) success(d broker.Delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order[d.Key] = append(c.order[d.Key], d.ID)
}

func (c *calls) of(id string) []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.attempts[id])
}

func (c *calls) successes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ids := range c.order {
		n += len(ids)
	}
	return n
}

// stream publishes n messages on topic over 20 keys and returns them and
// the set of poison IDs (every n/poison-th message).
func stream(t *testing.T, b broker.Publisher, topic string, n, poison int) ([]broker.Message, map[string]bool) {
	t.Helper()
	msgs := make([]broker.Message, n)
	bad := map[string]bool{}
	for i := range msgs {
		m := broker.NewMessage(topic, []byte(fmt.Sprintf(`{"n":%d}`, i)))
		m.Key = fmt.Sprintf("customer-%d", i%20)
		m.Headers = map[string]string{"type": "OrderPlaced", "seq": fmt.Sprint(i)}
		msgs[i] = m
		if i%(n/poison) == n/poison/2 {
			bad[m.ID] = true
		}
	}
	if len(bad) != poison {
		t.Fatalf("picked %d poison messages, want %d", len(bad), poison)
	}
	if err := b.Publish(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	return msgs, bad
}

// checkStream asserts the outcome of a stream run: good messages handled
// once each in per-key order, each poison message attempted exactly
// maxAttempts times and dead-lettered once with a correct envelope.
func checkStream(t *testing.T, msgs []broker.Message, bad map[string]bool, rec *calls, dead []broker.Message, maxAttempts int, group, handler string) {
	t.Helper()
	wantOrder := map[string][]string{}
	for _, m := range msgs {
		got := rec.of(m.ID)
		if bad[m.ID] {
			want := make([]int, maxAttempts)
			for i := range want {
				want[i] = i + 1
			}
			if !slices.Equal(got, want) {
				t.Errorf("poison %s attempts %v, want %v", m.ID, got, want)
			}
			continue
		}
		wantOrder[m.Key] = append(wantOrder[m.Key], m.ID)
		if !slices.Equal(got, []int{1}) {
			t.Errorf("good message %s attempts %v, want [1]", m.ID, got)
		}
	}
	rec.mu.Lock()
	for k, want := range wantOrder {
		if !slices.Equal(rec.order[k], want) {
			t.Errorf("key %s processed out of order", k)
		}
	}
	rec.mu.Unlock()

	if len(dead) != len(bad) {
		t.Fatalf("%d dead letters, want %d", len(dead), len(bad))
	}
	byID := map[string]broker.Message{}
	for _, m := range msgs {
		byID[m.ID] = m
	}
	for _, dl := range dead {
		orig, ok := byID[dl.ID]
		if !ok || !bad[dl.ID] {
			t.Errorf("dead letter %s is not a poison message", dl.ID)
			continue
		}
		checkDeadLetter(t, orig, dl, maxAttempts, dlq.ClassTransient, group, handler)
	}
}

// checkDeadLetter asserts a dead letter carries orig unchanged plus a
// correct envelope.
func checkDeadLetter(t *testing.T, orig, dl broker.Message, attempts int, class dlq.Class, group, handler string) {
	t.Helper()
	if string(dl.Payload) != string(orig.Payload) || dl.Key != orig.Key {
		t.Errorf("dead letter %s: payload %q key %q, want %q %q", dl.ID, dl.Payload, dl.Key, orig.Payload, orig.Key)
	}
	for k, v := range orig.Headers {
		if dl.Headers[k] != v {
			t.Errorf("dead letter %s: header %s = %q, want %q", dl.ID, k, dl.Headers[k], v)
		}
	}
	env, err := dlq.ParseEnvelope(dl.Headers)
	if err != nil {
		t.Fatalf("dead letter %s: %v", dl.ID, err)
	}
	if env.ID != orig.ID || env.Topic != orig.Topic || env.Key != orig.Key || env.Group != group || env.Handler != handler {
		t.Errorf("envelope identity %+v", env)
	}
	if !env.Time.Equal(orig.Time) {
		t.Errorf("envelope time %v, want %v", env.Time, orig.Time)
	}
	if env.Attempts != attempts || env.Class != class {
		t.Errorf("envelope attempts %d class %v, want %d %v", env.Attempts, env.Class, attempts, class)
	}
	if env.Error == "" || env.FirstFailure.IsZero() || env.LastFailure.Before(env.FirstFailure) || !env.Due.IsZero() {
		t.Errorf("envelope failure fields %+v", env)
	}
}

func newConsumer(t *testing.T, cfg dlq.Config) *dlq.Consumer {
	t.Helper()
	c, err := dlq.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPoisonStreamInProcess: 1,000 messages with 10 poison ones on the
// memory broker. The 990 good ones are handled once each, in per-key order;
// each poison message is attempted exactly MaxAttempts times and lands in
// the dead-letter topic with a correct envelope; nothing stays pending.
func TestPoisonStreamInProcess(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	msgs, bad := stream(t, b, "orders", 1000, 10)
	mp := dlqtest.NewMeterProvider()
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: fastPolicy, Name: "charge", MeterProvider: mp})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing", Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			if bad[d.ID] {
				return fmt.Errorf("charge order %s: card processor unavailable", d.ID)
			}
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "the stream to drain", func() bool {
		return b.Pending("orders", "billing") == 0 && rec.successes() == 990 && len(b.Published("orders.billing.dlq")) == 10
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkStream(t, msgs, bad, rec, b.Published("orders.billing.dlq"), fastPolicy.MaxAttempts, "billing", "charge")
	if got := mp.Sum("steadfast.dlq.dead_lettered", attribute.String("dlq.reason", "exhausted")); got != 10 {
		t.Errorf("dead_lettered metric = %d, want 10", got)
	}
	if got := mp.Sum("steadfast.dlq.retried"); got != 10*int64(fastPolicy.MaxAttempts-1) {
		t.Errorf("retried metric = %d, want %d", got, 10*(fastPolicy.MaxAttempts-1))
	}
}

// TestPoisonStreamRedeliver: the same stream with RetryRedeliver: the
// memory broker redelivers, the middleware counts Delivery.Attempt.
func TestPoisonStreamRedeliver(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(time.Millisecond)})
	defer b.Close()
	msgs, bad := stream(t, b, "orders", 1000, 10)
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: fastPolicy, Retries: dlq.RetryRedeliver})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing", Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			if bad[d.ID] {
				return errors.New("still broken")
			}
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "the stream to drain", func() bool {
		return b.Pending("orders", "billing") == 0 && rec.successes() == 990 && len(b.Published("orders.billing.dlq")) == 10
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkStream(t, msgs, bad, rec, b.Published("orders.billing.dlq"), fastPolicy.MaxAttempts, "billing", "")
	// Each attempt was a separate delivery; the envelope still spans them.
	for _, m := range b.Published("orders.billing.dlq") {
		env, _ := dlq.ParseEnvelope(m.Headers)
		if !env.FirstFailure.Before(env.LastFailure) {
			t.Errorf("dead letter %s: first failure %v not before last %v", m.ID, env.FirstFailure, env.LastFailure)
		}
	}
}

// TestPoisonStreamRetryTopics: the same stream with RetryTopics on the
// memory broker: poison messages travel through the retry topics and end in
// the dead-letter topic after exactly MaxAttempts attempts; no attempt
// starts before its due time.
func TestPoisonStreamRetryTopics(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	msgs, bad := stream(t, b, "orders", 1000, 10)
	policy := dlq.Policy{MaxAttempts: 4, Backoff: broker.Backoff{Initial: 10 * time.Millisecond, Max: 40 * time.Millisecond, Jitter: -1}}
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: policy, Retries: dlq.RetryTopics, Name: "charge"})
	if got, want := c.Topics("orders", "billing"), []string{"orders.billing.retry.1", "orders.billing.retry.2", "orders.billing.retry.3", "orders.billing.dlq"}; !slices.Equal(got, want) {
		t.Errorf("Topics = %v, want %v", got, want)
	}
	rec := newCalls()
	var failedAt sync.Map // id -> []time.Time, taken before the handler returns
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing", Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			if d.Topic != "orders" || d.Group != "billing" {
				t.Errorf("retry delivered as %s/%s", d.Topic, d.Group)
			}
			for k := range d.Headers {
				if strings.HasPrefix(k, dlq.HeaderPrefix) {
					t.Errorf("handler sees envelope header %s", k)
				}
			}
			if bad[d.ID] {
				v, _ := failedAt.LoadOrStore(d.ID, &[]time.Time{})
				ts := v.(*[]time.Time)
				*ts = append(*ts, time.Now().Round(0))
				return errors.New("still broken")
			}
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "the stream to drain", func() bool {
		return b.Pending("orders", "billing") == 0 && rec.successes() == 990 && len(b.Published("orders.billing.dlq")) == 10
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkStream(t, msgs, bad, rec, b.Published("orders.billing.dlq"), policy.MaxAttempts, "billing", "charge")
	for level := 1; level <= 3; level++ {
		topic := dlq.RetryTopic("orders", "billing", level)
		if n := len(b.Published(topic)); n != 10 {
			t.Errorf("%s got %d messages, want 10", topic, n)
		}
		if p := b.Pending(topic, "billing"); p != 0 {
			t.Errorf("%s has %d pending", topic, p)
		}
	}
	// Attempt n+1 starts no earlier than the failure of attempt n plus
	// Backoff(n) (the due time is computed after the handler returned).
	// Times are compared on the wall clock, as due times travel between
	// processes as wall-clock instants: a host whose wall clock is being
	// slewed runs it faster or slower than the monotonic clock.
	for id := range bad {
		v, _ := failedAt.Load(id)
		fails := *v.(*[]time.Time)
		rec.mu.Lock()
		starts := rec.at[id]
		rec.mu.Unlock()
		for n := 1; n < len(starts); n++ {
			if gap, min := starts[n].Sub(fails[n-1]), policy.Delay(n); gap < min {
				t.Errorf("message %s attempt %d started %v after the failure, before its backoff %v", id, n+1, gap, min)
			}
		}
	}
}

// TestRetryTopicsDoNotBlockTheKey: while a failed message waits on a retry
// topic, later messages of the same key are handled (non-blocking), and
// the waiting message is not retried before it is due.
func TestRetryTopicsDoNotBlockTheKey(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	first := broker.NewMessage("orders", []byte("first"))
	first.Key = "customer-1"
	second := broker.NewMessage("orders", []byte("second"))
	second.Key = "customer-1"
	if err := b.Publish(context.Background(), first, second); err != nil {
		t.Fatal(err)
	}
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Retries: dlq.RetryTopics,
		Policy: dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Hour, Jitter: -1}}, MaxWait: 20 * time.Millisecond})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			if d.ID == first.ID {
				return errors.New("fails")
			}
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "the second message", func() bool { return rec.successes() == 1 })
	// Let the retry consumer see the waiting message a few times.
	waitFor(t, "the retry consumer to look at the waiting message", func() bool {
		return b.Pending("orders.g.retry.1", "g") == 1
	})
	time.Sleep(100 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := rec.of(first.ID); !slices.Equal(got, []int{1}) {
		t.Errorf("first message attempts %v, want [1] (its retry is due in an hour)", got)
	}
	if got := rec.of(second.ID); !slices.Equal(got, []int{1}) {
		t.Errorf("second message attempts %v", got)
	}
	if p := b.Pending("orders", "g"); p != 0 {
		t.Errorf("main topic has %d pending: the key is blocked", p)
	}
	if p := b.Pending("orders.g.retry.1", "g"); p != 1 {
		t.Errorf("retry topic has %d pending, want the waiting message", p)
	}
}

// TestPermanentErrorSkipsRetries: a Permanent error is dead-lettered after
// one attempt, whatever MaxAttempts says, with class "permanent".
func TestPermanentErrorSkipsRetries(t *testing.T) {
	t.Parallel()
	for _, retries := range []dlq.Retries{dlq.RetryInProcess, dlq.RetryRedeliver, dlq.RetryTopics} {
		t.Run(retries.String(), func(t *testing.T) {
			t.Parallel()
			b := memory.New(memory.Config{})
			defer b.Close()
			m := broker.NewMessage("orders", []byte("{not json"))
			m.Key = "k"
			if err := b.Publish(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			mp := dlqtest.NewMeterProvider()
			c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: dlq.Policy{MaxAttempts: 10}, Retries: retries, MeterProvider: mp})
			rec := newCalls()
			stop := start(t, func(ctx context.Context) error {
				return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
					rec.record(d)
					return dlq.Permanent(fmt.Errorf("decode order: %w", errors.New("unexpected EOF")))
				})
			})
			waitFor(t, "the dead letter", func() bool { return len(b.Published("orders.g.dlq")) == 1 && b.Pending("orders", "g") == 0 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if got := rec.of(m.ID); !slices.Equal(got, []int{1}) {
				t.Errorf("attempts %v, want [1]", got)
			}
			checkDeadLetter(t, m, b.Published("orders.g.dlq")[0], 1, dlq.ClassPermanent, "g", "")
			env, _ := dlq.ParseEnvelope(b.Published("orders.g.dlq")[0].Headers)
			if env.Error != "decode order: unexpected EOF" {
				t.Errorf("envelope error %q", env.Error)
			}
			if got := mp.Sum("steadfast.dlq.dead_lettered", attribute.String("error.class", "permanent"), attribute.String("dlq.reason", "permanent")); got != 1 {
				t.Errorf("dead_lettered{permanent} = %d", got)
			}
			if len(b.Published("orders.g.retry.1")) != 0 {
				t.Error("a permanent failure was sent to a retry topic")
			}
		})
	}
}

// TestDeadLetterPublishFailureKeepsTheMessage: while the dead-letter topic
// refuses publishes, the poison message is not acknowledged (it comes back);
// once the topic accepts, it is dead-lettered exactly once and nothing is
// lost. Messages of other keys keep flowing meanwhile.
func TestDeadLetterPublishFailureKeepsTheMessage(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(time.Millisecond)})
	defer b.Close()
	poison := broker.NewMessage("orders", []byte("poison"))
	poison.Key = "a"
	if err := b.Publish(context.Background(), poison); err != nil {
		t.Fatal(err)
	}
	pub := &dlqtest.FailingPublisher{Publisher: b, Topic: "orders.g.dlq"}
	pub.Fail.Store(3)
	mp := dlqtest.NewMeterProvider()
	c := newConsumer(t, dlq.Config{Publisher: pub, Subscriber: b, Policy: dlq.Policy{MaxAttempts: 2, Backoff: broker.Backoff{Initial: time.Millisecond}}, MeterProvider: mp})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			if d.ID == poison.ID {
				return errors.New("poison")
			}
			rec.success(d)
			return nil
		})
	})
	for i := range 20 {
		m := broker.NewMessage("orders", []byte("good"))
		m.Key = fmt.Sprint("b", i)
		if err := b.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the dead letter", func() bool {
		return len(b.Published("orders.g.dlq")) == 1 && b.Pending("orders", "g") == 0 && rec.successes() == 20
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := pub.Tries.Load(); n != 4 {
		t.Errorf("%d dead-letter publishes, want 4 (3 refused, 1 accepted)", n)
	}
	env, err := dlq.ParseEnvelope(b.Published("orders.g.dlq")[0].Headers)
	if err != nil || env.Attempts < 2 {
		t.Errorf("envelope %+v, %v", env, err)
	}
	if got := mp.Sum("steadfast.dlq.dead_letter_failures"); got != 3 {
		t.Errorf("dead_letter_failures = %d, want 3", got)
	}
}

// TestShutdownDuringBackoffLeavesMessageUnacknowledged: cancelling
// Subscribe while a message waits for its in-process retry ends the wait at
// once; the message is not acknowledged and not dead-lettered, and the next
// subscription gets it again with the attempt counted.
func TestShutdownDuringBackoffLeavesMessageUnacknowledged(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	m := broker.NewMessage("orders", []byte("x"))
	if err := b.Publish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Hour}}})
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			return errors.New("fails")
		})
	})
	waitFor(t, "the first attempt", func() bool { return len(rec.of(m.ID)) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if p := b.Pending("orders", "g"); p != 1 {
		t.Fatalf("pending = %d after shutdown, want 1", p)
	}
	if n := len(b.Published("orders.g.dlq")); n != 0 {
		t.Fatalf("%d dead letters after shutdown", n)
	}
	stop = start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "g"}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			rec.success(d)
			return nil
		})
	})
	waitFor(t, "the redelivery", func() bool { return b.Pending("orders", "g") == 0 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := rec.of(m.ID); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("attempts %v, want [1 2]", got)
	}
}

// TestAttemptsContinueFromDelivery: a delivery the broker already
// redelivered (Attempt 3) gets only the remaining attempts.
func TestAttemptsContinueFromDelivery(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	c := newConsumer(t, dlq.Config{Publisher: b, Policy: dlq.Policy{MaxAttempts: 5, Backoff: broker.Backoff{Initial: time.Millisecond}}})
	var seen []int
	h := c.Middleware()(func(_ context.Context, d broker.Delivery) error {
		seen = append(seen, d.Attempt)
		if !d.Redelivered {
			t.Error("Redelivered not set on attempt", d.Attempt)
		}
		return errors.New("fails")
	})
	d := broker.Delivery{Message: broker.NewMessage("orders", nil), Attempt: 3, Group: "g", Partition: -1, Offset: 7}
	if err := h(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []int{3, 4, 5}) {
		t.Errorf("attempts %v, want [3 4 5]", seen)
	}
	dead := b.Published("orders.g.dlq")
	if len(dead) != 1 {
		t.Fatalf("%d dead letters", len(dead))
	}
	env, _ := dlq.ParseEnvelope(dead[0].Headers)
	if env.Attempts != 5 || env.Offset != 7 || env.Partition != -1 {
		t.Errorf("envelope %+v", env)
	}

	// A delivery beyond MaxAttempts still gets one attempt.
	seen = nil
	d.Attempt = 9
	if err := h(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []int{9}) {
		t.Errorf("attempts %v, want [9]", seen)
	}
}

// TestPanicIsAFailure: a panicking handler is retried and dead-lettered
// like a failing one, with the panic in the envelope.
func TestPanicIsAFailure(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	c := newConsumer(t, dlq.Config{Publisher: b, Policy: fastPolicy})
	n := 0
	h := c.Middleware()(func(context.Context, broker.Delivery) error {
		n++
		panic("nil map")
	})
	if err := h(context.Background(), broker.Delivery{Message: broker.NewMessage("orders", nil), Attempt: 1, Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if n != fastPolicy.MaxAttempts {
		t.Errorf("%d calls, want %d", n, fastPolicy.MaxAttempts)
	}
	dead := b.Published("orders.g.dlq")
	if len(dead) != 1 || !strings.Contains(dead[0].Headers[dlq.HeaderError], "panicked: nil map") {
		t.Errorf("dead letters %+v", dead)
	}
}

// TestCustomClassifierAndDestination: a classifier using errors.As and a
// custom dead-letter topic.
func TestCustomClassifierAndDestination(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	type validationError struct{ error }
	c := newConsumer(t, dlq.Config{
		Publisher: b, Policy: fastPolicy,
		Classify: func(err error) dlq.Class {
			var ve validationError
			if errors.As(err, &ve) {
				return dlq.ClassPermanent
			}
			return dlq.Classify(err)
		},
		DeadLetterTopic: func(e dlq.Envelope) string { return "dead." + e.Topic },
	})
	n := 0
	h := c.Middleware()(func(context.Context, broker.Delivery) error {
		n++
		return fmt.Errorf("order 9: %w", validationError{errors.New("amount < 0")})
	})
	if err := h(context.Background(), broker.Delivery{Message: broker.NewMessage("orders", nil), Attempt: 1, Group: "g"}); err != nil {
		t.Fatal(err)
	}
	dead := b.Published("dead.orders")
	if n != 1 || len(dead) != 1 || dead[0].Headers[dlq.HeaderErrorClass] != "permanent" {
		t.Errorf("calls %d, dead letters %+v", n, dead)
	}
}

// TestDeadLetterLoopGuard: a failure on the dead-letter topic itself is
// not published back to it; the error is returned (message unacknowledged).
func TestDeadLetterLoopGuard(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	c := newConsumer(t, dlq.Config{Publisher: b, Policy: dlq.Policy{MaxAttempts: 1}, DeadLetterTopic: func(dlq.Envelope) string { return "dead" }})
	h := c.Middleware()(func(context.Context, broker.Delivery) error { return errors.New("fails") })
	err := h(context.Background(), broker.Delivery{Message: broker.NewMessage("dead", nil), Attempt: 1, Group: "g"})
	if err == nil || len(b.Published("dead")) != 0 {
		t.Errorf("err %v, published %d", err, len(b.Published("dead")))
	}
}

// TestHandlerContextCancelled: a failure while the handler's context is
// cancelled (shutdown past the drain timeout) is returned as it is,
// without dead-lettering.
func TestHandlerContextCancelled(t *testing.T) {
	t.Parallel()
	b := memory.New(memory.Config{})
	defer b.Close()
	c := newConsumer(t, dlq.Config{Publisher: b, Policy: dlq.Policy{MaxAttempts: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h := c.Middleware()(func(ctx context.Context, _ broker.Delivery) error { return ctx.Err() })
	if err := h(ctx, broker.Delivery{Message: broker.NewMessage("orders", nil), Attempt: 1, Group: "g"}); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	if len(b.Published("orders.g.dlq")) != 0 {
		t.Error("dead-lettered a message failed by shutdown")
	}
}

func TestConfigValidation(t *testing.T) {
	b := memory.New(memory.Config{})
	defer b.Close()
	bad := map[string]dlq.Config{
		"nil publisher":   {},
		"bad policy":      {Publisher: b, Policy: dlq.Policy{MaxAttempts: -1}},
		"unknown retries": {Publisher: b, Retries: dlq.Retries(9)},
		"negative levels": {Publisher: b, RetryLevels: -1},
		"negative wait":   {Publisher: b, MaxWait: -time.Second},
	}
	for name, cfg := range bad {
		if _, err := dlq.New(cfg); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
	c := newConsumer(t, dlq.Config{Publisher: b})
	err := c.Subscribe(context.Background(), broker.Subscription{Topic: "t", Group: "g"}, func(context.Context, broker.Delivery) error { return nil })
	if !errors.Is(err, dlq.ErrInvalidConfig) {
		t.Errorf("Subscribe without Subscriber = %v", err)
	}
	if err := c.Subscribe(context.Background(), broker.Subscription{Topic: "t"}, func(context.Context, broker.Delivery) error { return nil }); !errors.Is(err, broker.ErrEmptyGroup) {
		t.Errorf("Subscribe without group = %v", err)
	}
	if err := c.Subscribe(context.Background(), broker.Subscription{Topic: "t", Group: "g"}, nil); !errors.Is(err, broker.ErrNilHandler) {
		t.Errorf("Subscribe with nil handler = %v", err)
	}
}

// TestRetryTopicsTooLargeForEnvelope: with RetryTopics, a message that fits
// the publisher's limit but not with its retry envelope is retried in
// process instead (attempts 1..MaxAttempts in one delivery, none published
// to a retry topic), then dead-lettered without its payload, within the
// limit, saying so.
func TestRetryTopicsTooLargeForEnvelope(t *testing.T) {
	t.Parallel()
	const limit = 4000
	b := memory.New(memory.Config{MaxMessageBytes: limit})
	defer b.Close()
	policy := dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: time.Millisecond, Jitter: -1}}
	c := newConsumer(t, dlq.Config{Publisher: b, Subscriber: b, Policy: policy, Retries: dlq.RetryTopics})
	big := broker.NewMessage("orders", nil)
	big.Payload = []byte(strings.Repeat("x", limit-50-big.Size()))
	if err := b.Publish(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	rec := newCalls()
	stop := start(t, func(ctx context.Context) error {
		return c.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"}, func(_ context.Context, d broker.Delivery) error {
			rec.record(d)
			return errors.New("still broken")
		})
	})
	waitFor(t, "the dead letter", func() bool { return len(b.Published("orders.billing.dlq")) == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := rec.of(big.ID); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("attempts %v, want [1 2 3]", got)
	}
	for level := 1; level <= 2; level++ {
		if n := len(b.Published(dlq.RetryTopic("orders", "billing", level))); n != 0 {
			t.Errorf("%d messages on retry topic %d", n, level)
		}
	}
	dl := b.Published("orders.billing.dlq")[0]
	env, err := dlq.ParseEnvelope(dl.Headers)
	if err != nil || !env.PayloadOmitted || env.OriginalSize != big.Size() || env.Attempts != 3 || len(dl.Payload) != 0 || dl.Size() > limit {
		t.Errorf("dead letter of %d bytes, payload %d bytes, envelope %+v, %v", dl.Size(), len(dl.Payload), env, err)
	}
}
