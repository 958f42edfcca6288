// Package dlqtest is the conformance suite of the dlq patterns on a real
// broker: every backend package (kafkadlq, rabbitdlq) runs it with a
// factory that gives each case a fresh consumer and inspector.
//
//	func TestConformance(t *testing.T) {
//		dlqtest.Run(t, dlqtest.Features{Retries: []dlq.Retries{dlq.RetryInProcess}},
//			func(t *testing.T) dlqtest.Backend { ... })
//	}
//
// The cases assert exact counts: a poison stream (1,000 messages, 10 of
// them failing every time) where each good message is handled once and each
// poison message is attempted exactly Policy.MaxAttempts times, never
// before its backoff, and lands in the dead-letter destination with a
// correct envelope; a permanent failure dead-lettered without retries; a
// dead-letter publish that fails and loses nothing; replay after a fix by ID,
// by time range and all; purge by ID and all; bad input; and hostile input:
// envelope headers forged by a producer on a main topic (ignored), the Kafka
// Inspector's marker headers forged likewise (no dead letter hidden or
// removed), and messages too close to the size limit for an envelope
// (dead-lettered once, trimmed, never retried forever).
package dlqtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
)

// Features declares what a backend supports.
type Features struct {
	// Retries lists the retry modes the backend supports; the stream and
	// permanent-failure cases run once per mode, the other cases with the
	// first. Default: RetryInProcess only.
	Retries []dlq.Retries
	// Partitioned: deliveries carry a partition and an offset (Kafka), which
	// the envelope must record. Otherwise they carry a queue name.
	Partitioned bool
	// DelayPrecision is how much earlier than its backoff the broker may
	// start a retry because it keeps time in coarser units (RabbitMQ's
	// message TTLs are whole milliseconds). Default 0: never early.
	DelayPrecision time.Duration
	// MaxHeaderBytes is the most header bytes one message can carry on the
	// backend (RabbitMQ: its frame size, 128 KiB by default), when that is
	// below the publisher's size limit. Default 0: as many as the size
	// limit allows.
	MaxHeaderBytes int
	// Timeout bounds every wait. Default 2 minutes; it only fires when
	// something is stuck.
	Timeout time.Duration
}

// Consumer runs a handler with retries and dead-lettering. dlq.Consumer and
// the backend packages' consumers implement it.
type Consumer interface {
	Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error
}

// Backend is what a factory gives each case.
type Backend struct {
	// Publisher publishes the case's messages to their topic.
	Publisher broker.Publisher
	// Consumer returns a consumer of topic for group built with cfg: the
	// suite sets Policy, Retries, Name and MeterProvider, and sometimes
	// Publisher (to inject failures; use it for dead letters when set); the
	// backend fills in the rest. Before returning it prepares what the case
	// needs so that messages published afterwards are kept: the topic, the
	// group's queue, retry and dead-letter destinations. It registers its own
	// cleanup with t.Cleanup.
	Consumer func(t *testing.T, cfg dlq.Config, topic, group string) Consumer
	// Inspector returns an inspector of the dead-letter destination of topic
	// and group as the consumer names it; for an unknown topic, one whose
	// operations fail with an error matching dlq.ErrNotFound. replay, when
	// not nil, is the publisher its replays must go through (to inject
	// failures); nil means the inspector's default.
	Inspector func(t *testing.T, topic, group string, replay broker.Publisher) dlq.Inspector
}

// Factory returns a fresh backend for one case.
type Factory func(t *testing.T) Backend

// Run runs the suite. Cases run in parallel, each on its own backend,
// topic and group.
func Run(t *testing.T, f Features, factory Factory) {
	if len(f.Retries) == 0 {
		f.Retries = []dlq.Retries{dlq.RetryInProcess}
	}
	if f.Timeout <= 0 {
		f.Timeout = 2 * time.Minute
	}
	s := &suite{f: f, factory: factory}
	for _, r := range f.Retries {
		t.Run("PoisonStream/"+r.String(), func(t *testing.T) { t.Parallel(); s.poisonStream(t, r) })
		t.Run("Permanent/"+r.String(), func(t *testing.T) { t.Parallel(); s.permanent(t, r) })
		t.Run("ForgedEnvelope/"+r.String(), func(t *testing.T) { t.Parallel(); s.forgedEnvelope(t, r) })
	}
	t.Run("ForgedMarker", func(t *testing.T) { t.Parallel(); s.forgedMarker(t) })
	t.Run("NearSizeLimit", func(t *testing.T) { t.Parallel(); s.nearSizeLimit(t) })
	t.Run("DeadLetterPublishFails", func(t *testing.T) { t.Parallel(); s.publishFails(t) })
	if slices.Contains(f.Retries, dlq.RetryTopics) {
		t.Run("RetryPublishFails", func(t *testing.T) { t.Parallel(); s.retryPublishFails(t) })
	}
	t.Run("ReplayAndPurge", func(t *testing.T) { t.Parallel(); s.replayAndPurge(t) })
	t.Run("ReplayPartialFailure", func(t *testing.T) { t.Parallel(); s.replayPartialFailure(t) })
	t.Run("ShutdownDuringRetry", func(t *testing.T) { t.Parallel(); s.shutdownDuringRetry(t) })
	t.Run("BadInput", func(t *testing.T) { t.Parallel(); s.badInput(t) })
}

type suite struct {
	f       Features
	factory Factory
}

// Name returns a unique name of [a-z0-9_], valid as a Kafka topic and a
// RabbitMQ exchange or queue.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + hex.EncodeToString(b[:])
}

// recorder notes every handler call.
type recorder struct {
	mu       sync.Mutex
	attempts map[string][]int
	starts   map[string][]time.Time
	fails    map[string][]time.Time
	order    map[string][]string // key -> IDs of successes in order
	last     map[string]broker.Delivery
	ok       int
}

func newRecorder() *recorder {
	return &recorder{attempts: map[string][]int{}, starts: map[string][]time.Time{}, fails: map[string][]time.Time{},
		order: map[string][]string{}, last: map[string]broker.Delivery{}}
}

func (r *recorder) begin(d broker.Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts[d.ID] = append(r.attempts[d.ID], d.Attempt)
	r.starts[d.ID] = append(r.starts[d.ID], time.Now())
	r.last[d.ID] = d
}

// end records the result; the failure time is taken before the handler
// returns, so it is no later than the consumer's.
func (r *recorder) end(d broker.Delivery, err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.fails[d.ID] = append(r.fails[d.ID], time.Now())
		return err
	}
	r.order[d.Key] = append(r.order[d.Key], d.ID)
	r.ok++
	return nil
}

func (r *recorder) successes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ok
}

func (r *recorder) of(id string) []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.attempts[id])
}

func (r *recorder) delivery(id string) broker.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last[id]
}

// run starts c.Subscribe in the background; the returned function stops
// it and fails the test on an error. It is also called at cleanup.
func (s *suite) run(t *testing.T, c Consumer, sub broker.Subscription, h broker.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Subscribe(ctx, sub, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Subscribe returned %v", err)
				}
			case <-time.After(s.f.Timeout):
				t.Errorf("Subscribe did not return within %v of its cancellation", s.f.Timeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it holds; it fails the test after the timeout.
func (s *suite) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(s.f.Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", s.f.Timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// list lists dead letters, failing the test on an error.
func list(t *testing.T, in dlq.Inspector, f dlq.Filter) []dlq.DeadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dls, err := in.List(ctx, f)
	if err != nil {
		t.Fatalf("List(%+v): %v", f, err)
	}
	return dls
}

// waitDead waits until in lists exactly n dead letters and returns them.
// It polls every 100ms, because listing may read the whole destination.
func (s *suite) waitDead(t *testing.T, in dlq.Inspector, n int) []dlq.DeadLetter {
	t.Helper()
	deadline := time.Now().Add(s.f.Timeout)
	for {
		dls := list(t, in, dlq.Filter{})
		if len(dls) == n {
			return dls
		}
		if len(dls) > n {
			t.Fatalf("%d dead letters, want %d", len(dls), n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v with %d dead letters, want %d", s.f.Timeout, len(dls), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stream returns n messages for topic over 20 keys, with application
// headers, and the IDs of `poison` of them spread through the stream.
func stream(topic string, n, poison int) ([]broker.Message, map[string]bool) {
	msgs := make([]broker.Message, n)
	bad := map[string]bool{}
	for i := range msgs {
		m := broker.NewMessage(topic, []byte(fmt.Sprintf(`{"order":%d}`, i)))
		m.Key = fmt.Sprintf("customer-%d", i%20)
		m.Headers = map[string]string{broker.HeaderType: "OrderPlaced", "seq": fmt.Sprint(i), broker.HeaderCorrelationID: "c-" + fmt.Sprint(i)}
		msgs[i] = m
		if poison > 0 && i%(n/poison) == n/poison/2 {
			bad[m.ID] = true
		}
	}
	return msgs, bad
}

func publish(t *testing.T, p broker.Publisher, msgs ...broker.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < len(msgs); i += 250 {
		if err := p.Publish(ctx, msgs[i:min(i+250, len(msgs))]...); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

// streamPolicy retries fast, with deterministic waits so due times can be
// checked.
var streamPolicy = dlq.Policy{MaxAttempts: 3, Backoff: broker.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Jitter: -1}}

// checkEnvelope asserts that dl carries orig unchanged plus a correct
// envelope.
func (s *suite) checkEnvelope(t *testing.T, orig broker.Message, dl dlq.DeadLetter, attempts int, class dlq.Class, group, handler string) {
	t.Helper()
	m := dl.Message
	if string(m.Payload) != string(orig.Payload) || m.Key != orig.Key {
		t.Errorf("dead letter %s: payload %q key %q, want %q %q", dl.ID(), m.Payload, m.Key, orig.Payload, orig.Key)
	}
	for k, v := range orig.Headers {
		if m.Headers[k] != v {
			t.Errorf("dead letter %s: header %s = %q, want %q", dl.ID(), k, m.Headers[k], v)
		}
	}
	if dl.EnvelopeErr != nil {
		t.Errorf("dead letter %s: %v", dl.ID(), dl.EnvelopeErr)
		return
	}
	e := dl.Envelope
	if e.ID != orig.ID || e.Topic != orig.Topic || e.Key != orig.Key || e.Group != group || e.Handler != handler {
		t.Errorf("dead letter %s: envelope id %q topic %q key %q group %q handler %q, want %q %q %q %q %q",
			dl.ID(), e.ID, e.Topic, e.Key, e.Group, e.Handler, orig.ID, orig.Topic, orig.Key, group, handler)
	}
	if d := e.Time.Sub(orig.Time); d < -time.Millisecond || d > time.Millisecond {
		t.Errorf("dead letter %s: envelope time %v, want %v", dl.ID(), e.Time, orig.Time)
	}
	if e.Attempts != attempts || e.Class != class || e.Error == "" {
		t.Errorf("dead letter %s: attempts %d class %v error %q, want %d %v and an error", dl.ID(), e.Attempts, e.Class, e.Error, attempts, class)
	}
	if e.FirstFailure.IsZero() || e.LastFailure.Before(e.FirstFailure) || (attempts > 1 && !e.FirstFailure.Before(e.LastFailure)) {
		t.Errorf("dead letter %s: first failure %v, last failure %v", dl.ID(), e.FirstFailure, e.LastFailure)
	}
	if !e.Due.IsZero() {
		t.Errorf("dead letter %s: due %v set", dl.ID(), e.Due)
	}
	if s.f.Partitioned {
		if e.Partition < 0 || e.Offset < 0 {
			t.Errorf("dead letter %s: partition %d offset %d not recorded", dl.ID(), e.Partition, e.Offset)
		}
	} else if e.Queue == "" {
		t.Errorf("dead letter %s: queue not recorded", dl.ID())
	}
}

// poisonStream: 1,000 messages with 10 poison ones. Good messages are
// handled once each, in per-key order; each poison message is attempted
// exactly MaxAttempts times, each retry no earlier than its backoff after
// the failure before it, then dead-lettered with a correct envelope.
func (s *suite) poisonStream(t *testing.T, retries dlq.Retries) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "billing"
	mp := NewMeterProvider()
	c := b.Consumer(t, dlq.Config{Policy: streamPolicy, Retries: retries, Name: "charge", MeterProvider: mp}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	msgs, bad := stream(topic, 1000, 10)
	publish(t, b.Publisher, msgs...)
	rec := newRecorder()
	stop := s.run(t, c, broker.Subscription{Topic: topic, Group: group, Concurrency: 8}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if d.Topic != topic || d.Group != group {
			t.Errorf("delivery of %s as %s/%s, want %s/%s", d.ID, d.Topic, d.Group, topic, group)
		}
		for k := range d.Headers {
			if strings.HasPrefix(k, dlq.HeaderPrefix) {
				t.Errorf("handler sees envelope header %s", k)
			}
		}
		if bad[d.ID] {
			return rec.end(d, fmt.Errorf("charge %s: card processor unavailable", d.ID))
		}
		return rec.end(d, nil)
	})
	s.waitFor(t, "990 good messages", func() bool { return rec.successes() == 990 })
	dead := s.waitDead(t, in, 10)
	stop()

	want := make([]int, streamPolicy.MaxAttempts)
	for i := range want {
		want[i] = i + 1
	}
	wantOrder := map[string][]string{}
	byID := map[string]broker.Message{}
	for _, m := range msgs {
		byID[m.ID] = m
		got := rec.of(m.ID)
		if !bad[m.ID] {
			wantOrder[m.Key] = append(wantOrder[m.Key], m.ID)
			if !slices.Equal(got, []int{1}) {
				t.Errorf("good message %s handled with attempts %v, want [1]", m.ID, got)
			}
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("poison message %s handled with attempts %v, want %v", m.ID, got, want)
		}
		rec.mu.Lock()
		starts, fails := rec.starts[m.ID], rec.fails[m.ID]
		rec.mu.Unlock()
		for n := 1; n < len(starts) && n <= len(fails); n++ {
			if gap, due := starts[n].Sub(fails[n-1]), streamPolicy.Delay(n); gap < due-s.f.DelayPrecision {
				t.Errorf("poison message %s: attempt %d started %v after attempt %d failed, before its backoff %v", m.ID, n+1, gap, n, due)
			}
		}
	}
	rec.mu.Lock()
	for k, w := range wantOrder {
		if !slices.Equal(rec.order[k], w) {
			t.Errorf("key %s: good messages handled in order %v, want %v", k, rec.order[k], w)
		}
	}
	rec.mu.Unlock()
	for _, dl := range dead {
		orig, ok := byID[dl.ID()]
		if !ok || !bad[dl.ID()] {
			t.Errorf("dead letter %s is not a poison message", dl.ID())
			continue
		}
		s.checkEnvelope(t, orig, dl, streamPolicy.MaxAttempts, dlq.ClassTransient, group, "charge")
	}
	if got := mp.Sum("steadfast.dlq.dead_lettered", attribute.String("dlq.reason", "exhausted"), attribute.String("messaging.destination.name", topic)); got != 10 {
		t.Errorf("steadfast.dlq.dead_lettered{exhausted} = %d, want 10", got)
	}
	if got, want := mp.Sum("steadfast.dlq.retried"), int64(10*(streamPolicy.MaxAttempts-1)); got != want {
		t.Errorf("steadfast.dlq.retried = %d, want %d", got, want)
	}
}

// permanent: a dlq.Permanent failure is dead-lettered after one attempt,
// whatever MaxAttempts says; the messages around it are handled.
func (s *suite) permanent(t *testing.T, retries dlq.Retries) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	mp := NewMeterProvider()
	policy := dlq.Policy{MaxAttempts: 5, Backoff: broker.Backoff{Initial: 20 * time.Millisecond, Jitter: -1}}
	c := b.Consumer(t, dlq.Config{Policy: policy, Retries: retries, MeterProvider: mp}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	msgs, _ := stream(topic, 5, 0)
	msgs[2].Payload = []byte(`{"order":`)
	publish(t, b.Publisher, msgs...)
	rec := newRecorder()
	stop := s.run(t, c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if !strings.HasSuffix(string(d.Payload), "}") {
			return rec.end(d, dlq.Permanent(fmt.Errorf("decode order: %w", errors.New("unexpected end of JSON input"))))
		}
		return rec.end(d, nil)
	})
	s.waitFor(t, "4 good messages", func() bool { return rec.successes() == 4 })
	dead := s.waitDead(t, in, 1)
	stop()
	if got := rec.of(msgs[2].ID); !slices.Equal(got, []int{1}) {
		t.Errorf("permanent failure handled with attempts %v, want [1]", got)
	}
	s.checkEnvelope(t, msgs[2], dead[0], 1, dlq.ClassPermanent, group, "")
	if e := dead[0].Envelope.Error; e != "decode order: unexpected end of JSON input" {
		t.Errorf("envelope error %q", e)
	}
	if got := mp.Sum("steadfast.dlq.dead_lettered", attribute.String("error.class", "permanent"), attribute.String("dlq.reason", "permanent")); got != 1 {
		t.Errorf("steadfast.dlq.dead_lettered{permanent} = %d, want 1", got)
	}
	if got := mp.Sum("steadfast.dlq.retried"); got != 0 {
		t.Errorf("steadfast.dlq.retried = %d, want 0", got)
	}
}

// FailingPublisher wraps a Publisher and refuses every publish that
// carries a message for Topic (with Prefix, for any topic starting with
// it) while Fail is above zero, counting the refused and accepted attempts
// in Tries. Tests use it to make a dead-letter or retry destination
// unavailable.
type FailingPublisher struct {
	broker.Publisher
	Topic string
	// Prefix makes Topic match every topic that starts with it.
	Prefix bool
	Fail   atomic.Int32
	Tries  atomic.Int32
}

func (p *FailingPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	for _, m := range msgs {
		if m.Topic == p.Topic || p.Prefix && strings.HasPrefix(m.Topic, p.Topic) {
			p.Tries.Add(1)
			if p.Fail.Add(-1) >= 0 {
				return errors.New("dead-letter destination unavailable")
			}
		}
	}
	return p.Publisher.Publish(ctx, msgs...)
}

// refusal is the start of a case where a destination the consumer
// publishes to (dead-letter or retry topics) refuses its first publishes.
type refusal struct {
	pub  *FailingPublisher // the consumer's publisher: refuses 3 publishes to the destination, then accepts
	mp   *MeterProvider    // the consumer's metrics
	c    Consumer
	in   dlq.Inspector    // of the case's dead letters
	msgs []broker.Message // 21 messages over 20 keys, already published to the topic
}

// setUpRefusal builds, on a fresh backend, a consumer of topic for group
// from cfg whose publishes go through refuse, and publishes 21 messages to
// topic. refuse names the refused destination (Topic, and Prefix for a
// family of topics); setUpRefusal sets its Publisher to the backend's and
// has it refuse 3 publishes. It sets cfg's Publisher and MeterProvider.
func (s *suite) setUpRefusal(t *testing.T, topic, group string, refuse *FailingPublisher, cfg dlq.Config) refusal {
	t.Helper()
	b := s.factory(t)
	refuse.Publisher = b.Publisher
	refuse.Fail.Store(3)
	mp := NewMeterProvider()
	cfg.Publisher, cfg.MeterProvider = refuse, mp
	c := b.Consumer(t, cfg, topic, group)
	in := b.Inspector(t, topic, group, nil)
	msgs, _ := stream(topic, 21, 0)
	publish(t, b.Publisher, msgs...)
	return refusal{pub: refuse, mp: mp, c: c, in: in, msgs: msgs}
}

// publishFails: while the dead-letter destination refuses publishes, the
// poison message stays unacknowledged and comes back; once it accepts, the
// message is dead-lettered exactly once. Other keys flow meanwhile.
func (s *suite) publishFails(t *testing.T) {
	topic, group := Name("dlqt"), "g"
	r := s.setUpRefusal(t, topic, group,
		&FailingPublisher{Topic: dlq.DeadLetterTopic(dlq.Envelope{Topic: topic, Group: group})},
		dlq.Config{Policy: dlq.Policy{MaxAttempts: 2, Backoff: broker.Backoff{Initial: 5 * time.Millisecond}}, Retries: s.f.Retries[0]})
	poison := r.msgs[0]
	rec := newRecorder()
	stop := s.run(t, r.c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if d.ID == poison.ID {
			return rec.end(d, errors.New("poison"))
		}
		return rec.end(d, nil)
	})
	s.waitFor(t, "20 good messages", func() bool { return rec.successes() == 20 })
	dead := s.waitDead(t, r.in, 1)
	stop()
	if n := r.pub.Tries.Load(); n != 4 {
		t.Errorf("%d dead-letter publishes, want 4 (3 refused, 1 accepted)", n)
	}
	if got := r.mp.Sum("steadfast.dlq.dead_letter_failures"); got != 3 {
		t.Errorf("steadfast.dlq.dead_letter_failures = %d, want 3", got)
	}
	if dead[0].ID() != poison.ID || dead[0].Envelope.Attempts < 2 {
		t.Errorf("dead letter %s with %d attempts, want %s with at least 2", dead[0].ID(), dead[0].Envelope.Attempts, poison.ID)
	}
	if n := len(rec.of(poison.ID)); n < 2+3 {
		t.Errorf("poison message handled %d times, want at least 5 (2 attempts, then one per refused publish)", n)
	}
}

// retryPublishFails (RetryTopics): while the retry topic refuses publishes,
// a failed message stays unacknowledged and comes back; once the retry topic
// accepts it, it is acknowledged, handled again from the retry topic, and
// not dead-lettered. Nothing is lost and other keys flow meanwhile.
func (s *suite) retryPublishFails(t *testing.T) {
	topic, group := Name("dlqt"), "g"
	r := s.setUpRefusal(t, topic, group,
		// Every retry level: a redelivered message goes to the next level.
		&FailingPublisher{Topic: strings.TrimSuffix(dlq.RetryTopic(topic, group, 1), "1"), Prefix: true},
		dlq.Config{Policy: dlq.Policy{MaxAttempts: 10, Backoff: broker.Backoff{Initial: 5 * time.Millisecond}}, Retries: dlq.RetryTopics})
	flaky := r.msgs[0]
	rec := newRecorder()
	stop := s.run(t, r.c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		// It fails until the retry topic took it, then succeeds there.
		if d.ID == flaky.ID && r.pub.Tries.Load() < 4 {
			return rec.end(d, errors.New("flaky"))
		}
		return rec.end(d, nil)
	})
	s.waitFor(t, "every message handled", func() bool { return rec.successes() == 21 })
	stop()
	if n := r.pub.Tries.Load(); n != 4 {
		t.Errorf("%d retry-topic publishes, want 4 (3 refused, 1 accepted)", n)
	}
	if got := r.mp.Sum("steadfast.dlq.dead_letter_failures"); got != 3 {
		t.Errorf("steadfast.dlq.dead_letter_failures = %d, want 3", got)
	}
	if n := len(rec.of(flaky.ID)); n != 5 {
		t.Errorf("flaky message handled %d times, want 5 (one per refused publish, the accepted one, then from the retry topic)", n)
	}
	if dls := list(t, r.in, dlq.Filter{}); len(dls) != 0 {
		t.Errorf("%d dead letters, want none", len(dls))
	}
}

// replayAndPurge: dead letters replayed after the handler is fixed (by ID,
// by time range, then all) reach the original topic with the replay
// headers, attempts from 1 and no envelope, and are handled; purge by ID
// and purge all empty the destination, which keeps working afterwards.
func (s *suite) replayAndPurge(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	c := b.Consumer(t, dlq.Config{Policy: dlq.Policy{MaxAttempts: 2, Backoff: broker.Backoff{Initial: 5 * time.Millisecond}}, Retries: s.f.Retries[0]}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	msgs, bad := stream(topic, 60, 6)
	var fixed atomic.Bool
	rec := newRecorder()
	stop := s.run(t, c, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		switch {
		case strings.HasPrefix(string(d.Payload), "garbage"):
			return rec.end(d, dlq.Permanent(errors.New("cannot decode")))
		case bad[d.ID] && !fixed.Load():
			return rec.end(d, errors.New("bug"))
		}
		return rec.end(d, nil)
	})
	// Publish one poison message at a time so their failure times differ
	// and follow publish order.
	var poison []broker.Message
	for _, m := range msgs {
		if bad[m.ID] {
			poison = append(poison, m)
		}
	}
	for i, m := range poison {
		publish(t, b.Publisher, m)
		s.waitDead(t, in, i+1)
	}
	var good []broker.Message
	for _, m := range msgs {
		if !bad[m.ID] {
			good = append(good, m)
		}
	}
	publish(t, b.Publisher, good...)
	s.waitFor(t, "54 good messages", func() bool { return rec.successes() == 54 })
	dead := list(t, in, dlq.Filter{})
	for i, dl := range dead {
		if dl.ID() != poison[i].ID {
			t.Fatalf("dead letter %d is %s, want %s (oldest failure first)", i, dl.ID(), poison[i].ID)
		}
	}
	if got := list(t, in, dlq.Filter{IDs: []string{poison[3].ID}}); len(got) != 1 || got[0].ID() != poison[3].ID {
		t.Errorf("List by ID returned %d dead letters", len(got))
	}
	if got := list(t, in, dlq.Filter{Limit: 2}); len(got) != 2 || got[0].ID() != poison[0].ID || got[1].ID() != poison[1].ID {
		t.Errorf("List with Limit 2 returned %d dead letters", len(got))
	}
	fixed.Store(true)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	replay := func(f dlq.Filter, want int) {
		t.Helper()
		n, err := in.Replay(ctx, f, dlq.ReplayOptions{})
		if err != nil || n != want {
			t.Fatalf("Replay(%+v) = %d, %v; want %d", f, n, err, want)
		}
	}
	// By ID.
	replay(dlq.Filter{IDs: []string{poison[4].ID}}, 1)
	s.waitFor(t, "the replay by ID", func() bool { return rec.successes() == 55 })
	if n := len(list(t, in, dlq.Filter{})); n != 5 {
		t.Errorf("%d dead letters after replaying one, want 5", n)
	}
	// By time range: the two oldest.
	replay(dlq.Filter{From: dead[0].FailedAt(), To: dead[2].FailedAt()}, 2)
	s.waitFor(t, "the replay by time range", func() bool { return rec.successes() == 57 })
	left := list(t, in, dlq.Filter{})
	if len(left) != 3 || left[0].ID() != poison[2].ID {
		t.Errorf("after replaying the two oldest: %d dead letters", len(left))
	}
	// All.
	replay(dlq.Filter{}, 3)
	s.waitFor(t, "the replay of all", func() bool { return rec.successes() == 60 })
	if n := len(list(t, in, dlq.Filter{})); n != 0 {
		t.Errorf("%d dead letters after replaying all", n)
	}
	for _, m := range poison {
		got := rec.of(m.ID)
		if !slices.Equal(got, []int{1, 2, 1}) {
			t.Errorf("replayed message %s handled with attempts %v, want [1 2 1]", m.ID, got)
		}
		d := rec.delivery(m.ID)
		if d.Topic != topic || d.Key != m.Key || string(d.Payload) != string(m.Payload) || d.Headers["seq"] != m.Headers["seq"] ||
			d.Headers[dlq.HeaderReplays] != "1" || d.Headers[dlq.HeaderReplayedAt] == "" || d.Headers[dlq.HeaderAttempts] != "" {
			t.Errorf("replayed delivery of %s: topic %q key %q payload %q headers %v", m.ID, d.Topic, d.Key, d.Payload, d.Headers)
		}
	}

	// Purge.
	var garbage []broker.Message
	for i := range 4 {
		m := broker.NewMessage(topic, []byte(fmt.Sprint("garbage ", i)))
		m.Key = fmt.Sprint("g", i)
		garbage = append(garbage, m)
	}
	publish(t, b.Publisher, garbage...)
	s.waitDead(t, in, 4)
	if n, err := in.Purge(ctx, dlq.Filter{IDs: []string{garbage[1].ID}}); err != nil || n != 1 {
		t.Fatalf("Purge by ID = %d, %v; want 1", n, err)
	}
	left = list(t, in, dlq.Filter{})
	if len(left) != 3 || slices.ContainsFunc(left, func(dl dlq.DeadLetter) bool { return dl.ID() == garbage[1].ID }) {
		t.Errorf("after purging one: %d dead letters", len(left))
	}
	if n, err := in.Purge(ctx, dlq.Filter{}); err != nil || n != 3 {
		t.Fatalf("Purge all = %d, %v; want 3", n, err)
	}
	if n := len(list(t, in, dlq.Filter{})); n != 0 {
		t.Errorf("%d dead letters after purging all", n)
	}
	// The destination keeps working.
	late := broker.NewMessage(topic, []byte("garbage late"))
	publish(t, b.Publisher, late)
	if dl := s.waitDead(t, in, 1); dl[0].ID() != late.ID {
		t.Errorf("dead letter after the purge is %s, want %s", dl[0].ID(), late.ID)
	}
	stop()
	if n := len(rec.of(garbage[0].ID)); n != 1 {
		t.Errorf("purged message handled %d times, want 1", n)
	}
}

// refuseIDs fails the messages with the given IDs with a
// *broker.PublishError and publishes the others.
type refuseIDs struct {
	broker.Publisher
	ids map[string]bool
}

func (p refuseIDs) Publish(ctx context.Context, msgs ...broker.Message) error {
	var ok []broker.Message
	var pe broker.PublishError
	for i, m := range msgs {
		if p.ids[m.ID] {
			pe.Failures = append(pe.Failures, broker.PublishFailure{Index: i, ID: m.ID, Err: errors.New("refused")})
			continue
		}
		ok = append(ok, m)
	}
	if len(ok) > 0 {
		if err := p.Publisher.Publish(ctx, ok...); err != nil {
			return err
		}
	}
	if len(pe.Failures) > 0 {
		return &pe
	}
	return nil
}

// replayPartialFailure: when the broker refuses some replays, Replay
// reports them with an error and the count of those it did replay; the
// refused ones stay in the destination and a later replay delivers them.
func (s *suite) replayPartialFailure(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	c := b.Consumer(t, dlq.Config{Retries: s.f.Retries[0]}, topic, group)
	msgs, _ := stream(topic, 3, 0)
	var fixed atomic.Bool
	rec := newRecorder()
	s.run(t, c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if !fixed.Load() {
			return rec.end(d, dlq.Permanent(errors.New("bug")))
		}
		return rec.end(d, nil)
	})
	publish(t, b.Publisher, msgs...)
	in := b.Inspector(t, topic, group, nil)
	s.waitDead(t, in, 3)
	fixed.Store(true)
	refusing := b.Inspector(t, topic, group, refuseIDs{Publisher: b.Publisher, ids: map[string]bool{msgs[1].ID: true}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := refusing.Replay(ctx, dlq.Filter{}, dlq.ReplayOptions{})
	var pe *broker.PublishError
	if n != 2 || !errors.As(err, &pe) {
		t.Fatalf("Replay with one refused = %d, %v; want 2 and a *broker.PublishError", n, err)
	}
	s.waitFor(t, "the two replays", func() bool { return rec.successes() == 2 })
	if left := list(t, in, dlq.Filter{}); len(left) != 1 || left[0].ID() != msgs[1].ID {
		t.Fatalf("after a partly refused replay: %d dead letters", len(left))
	}
	if n, err := in.Replay(ctx, dlq.Filter{}, dlq.ReplayOptions{}); n != 1 || err != nil {
		t.Fatalf("second Replay = %d, %v", n, err)
	}
	s.waitFor(t, "the last replay", func() bool { return rec.successes() == 3 })
	for _, m := range msgs {
		if got := len(rec.of(m.ID)); got != 2 {
			t.Errorf("message %s handled %d times, want 2 (failure, replay)", m.ID, got)
		}
	}
}

// shutdownDuringRetry: stopping the subscription while a message waits
// for an in-process retry ends the wait at once and leaves the message
// unacknowledged and not dead-lettered; the next subscription gets it.
func (s *suite) shutdownDuringRetry(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	// An adapter that sees the failure before it notices the shutdown may
	// retry the message once more while stopping (each such try is a real
	// attempt); MaxAttempts leaves room for that.
	c := b.Consumer(t, dlq.Config{Retries: dlq.RetryInProcess, Policy: dlq.Policy{MaxAttempts: 10, Backoff: broker.Backoff{Initial: time.Hour}}}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	m := broker.NewMessage(topic, []byte("x"))
	publish(t, b.Publisher, m)
	rec := newRecorder()
	stop := s.run(t, c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		return rec.end(d, errors.New("fails"))
	})
	s.waitFor(t, "the first attempt", func() bool { return len(rec.of(m.ID)) == 1 })
	stop()
	if n := len(list(t, in, dlq.Filter{})); n != 0 {
		t.Fatalf("%d dead letters after a shutdown during the retry wait", n)
	}
	stop = s.run(t, c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		return rec.end(d, nil)
	})
	s.waitFor(t, "the message after the restart", func() bool { return rec.successes() == 1 })
	stop()
	if got := rec.of(m.ID); len(got) < 2 {
		t.Errorf("attempts %v, want the failed one and the one after the restart", got)
	}
}

// badInput: invalid filters fail with dlq.ErrInvalidConfig and an unknown
// destination with dlq.ErrNotFound, touching nothing.
func (s *suite) badInput(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	b.Consumer(t, dlq.Config{Retries: s.f.Retries[0]}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	now := time.Now()
	for _, f := range []dlq.Filter{{Limit: -1}, {From: now, To: now.Add(-time.Second)}} {
		if _, err := in.List(ctx, f); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("List(%+v) = %v, want ErrInvalidConfig", f, err)
		}
		if _, err := in.Replay(ctx, f, dlq.ReplayOptions{}); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("Replay(%+v) = %v, want ErrInvalidConfig", f, err)
		}
		if _, err := in.Purge(ctx, f); !errors.Is(err, dlq.ErrInvalidConfig) {
			t.Errorf("Purge(%+v) = %v, want ErrInvalidConfig", f, err)
		}
	}
	if dls, err := in.List(ctx, dlq.Filter{}); err != nil || len(dls) != 0 {
		t.Errorf("List of an empty destination = %d, %v", len(dls), err)
	}
	missing := b.Inspector(t, Name("missing"), group, nil)
	if _, err := missing.List(ctx, dlq.Filter{}); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("List of a missing destination = %v, want ErrNotFound", err)
	}
	if _, err := missing.Purge(ctx, dlq.Filter{}); !errors.Is(err, dlq.ErrNotFound) {
		t.Errorf("Purge of a missing destination = %v, want ErrNotFound", err)
	}
}

// MeterProvider records the sums of Int64Counter adds by name and
// attributes, for asserting the dlq metrics. Other instruments are no-ops.
type MeterProvider struct {
	noop.MeterProvider
	mu   sync.Mutex
	adds []recorded
}

type recorded struct {
	name  string
	attrs attribute.Set
	n     int64
}

// NewMeterProvider returns an empty recording MeterProvider.
func NewMeterProvider() *MeterProvider { return &MeterProvider{} }

// Meter returns a meter recording into p.
func (p *MeterProvider) Meter(string, ...metric.MeterOption) metric.Meter { return meter{p: p} }

// Sum adds up the counter name over the adds having every attribute of
// want.
func (p *MeterProvider) Sum(name string, want ...attribute.KeyValue) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
next:
	for _, r := range p.adds {
		if r.name != name {
			continue
		}
		for _, kv := range want {
			if v, ok := r.attrs.Value(kv.Key); !ok || v != kv.Value {
				continue next
			}
		}
		n += r.n
	}
	return n
}

type meter struct {
	noop.Meter
	p *MeterProvider
}

func (m meter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return counter{name: name, p: m.p}, nil
}

type counter struct {
	noop.Int64Counter
	name string
	p    *MeterProvider
}

func (c counter) Add(_ context.Context, n int64, opts ...metric.AddOption) {
	cfg := metric.NewAddConfig(opts)
	c.p.mu.Lock()
	c.p.adds = append(c.p.adds, recorded{name: c.name, attrs: cfg.Attributes(), n: n})
	c.p.mu.Unlock()
}
