// Package brokertest is the conformance suite every broker adapter runs.
//
// An adapter's test calls Run with the features its broker promises and a
// factory that gives each case a fresh, isolated backend:
//
//	func TestConformance(t *testing.T) {
//		brokertest.Run(t, brokertest.Features{ConsumerGroups: true, Persistent: true,
//			PerKeyOrder: true, ExactlyOnce: true}, func(t *testing.T) brokertest.Backend {
//			b := brokermem.New(brokermem.Config{})
//			t.Cleanup(func() { b.Close() })
//			return brokertest.Backend{Publisher: b, Subscriber: b}
//		})
//	}
//
// Every case asserts exact counts. Where a broker delivers at least once,
// duplicates are counted and reported with t.Log; where Features.ExactlyOnce
// is set, a single duplicate fails the case.
package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// Features declares what a broker promises. Cases for promises a broker does
// not make are skipped with a message naming the feature.
type Features struct {
	// ConsumerGroups: every group receives every message; members of one
	// group share the messages.
	ConsumerGroups bool
	// Persistent: messages published while no member of a group runs are
	// delivered when one subscribes again.
	Persistent bool
	// PerKeyOrder: messages sharing a key are handled in publish order, one at
	// a time, while different keys are handled in parallel.
	PerKeyOrder bool
	// ExactlyOnce: without handler errors or broker failures no message is
	// handed to a group twice.
	ExactlyOnce bool
	// Restartable: the broker runs apart from the process and can be
	// restarted; the factory must then set Backend.Restart for the
	// BrokerRestart case (see RestartCase). Without it the case is skipped.
	Restartable bool
	// MaxMessageBytes is the adapter's size limit. Zero means the limit the
	// publisher reports (broker.SizeLimiter), or broker.DefaultMaxMessageBytes
	// when it reports none.
	MaxMessageBytes int
	// LoadMessages is the message count of the load case. Default 10,000.
	LoadMessages int
	// Timeout bounds each wait for deliveries. Default 60s.
	Timeout time.Duration
	// TimePrecision is the precision Message.Time keeps. Default 1ms.
	TimePrecision time.Duration
	// Limits are the protocol limits Publish enforces (the Hostile case
	// checks each is refused up front).
	Limits Limits
}

func (f Features) withDefaults() Features {
	if f.LoadMessages <= 0 {
		f.LoadMessages = 10000
	}
	if f.Timeout <= 0 {
		f.Timeout = 60 * time.Second
	}
	if f.TimePrecision <= 0 {
		f.TimePrecision = time.Millisecond
	}
	return f
}

// Backend is what a factory gives each case.
type Backend struct {
	Publisher  broker.Publisher
	Subscriber broker.Subscriber
	// Setup, when set, prepares a topic and the groups a case will use before
	// the case publishes: create a Kafka topic, declare RabbitMQ queues and
	// bindings. Topic and group names are unique per case.
	Setup func(ctx context.Context, topic string, groups ...string) error
	// Restart, when set, stops and starts the broker. The broker-restart case
	// calls it mid-stream; the case runs alone, after all the others.
	Restart func(ctx context.Context) error
	// Inject, when set, publishes to topic with key and payload a message
	// of the given kind as a raw producer of the broker's own protocol
	// would, bypassing the adapter's checks (see Injection), and returns
	// once the broker stored it. It returns an error matching
	// errors.ErrUnsupported for a kind the broker cannot be given. The
	// Hostile case uses it.
	Inject func(ctx context.Context, topic, key string, payload []byte, kind Injection) error
}

// RestartCase reports whether t is the broker-restart case, so a Factory
// can give that case a broker of its own to restart (a private node or
// cluster) and every other case the shared one.
func RestartCase(t *testing.T) bool { return strings.HasSuffix(t.Name(), "/"+restartCase) }

const restartCase = "BrokerRestart"

// Factory returns a fresh backend for one case. It registers its own cleanup
// with t.Cleanup.
type Factory func(t *testing.T) Backend

// Run runs the conformance suite. The cases run in parallel, each on its own
// backend from factory and its own topics and groups; the broker-restart case
// runs last, alone.
func Run(t *testing.T, f Features, factory Factory) {
	f = f.withDefaults()
	s := &suite{f: f, factory: factory}
	cases := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"RoundTrip", s.roundTrip},
		{"BadInput", s.badInput},
		{"Hostile", s.hostile},
		{"Load", s.load},
		{"PerKeyOrder", s.perKeyOrder},
		{"Redelivery", s.redelivery},
		{"SubscriberRestart", s.subscriberRestart},
		{"ConsumerGroups", s.consumerGroups},
		{"TopicIsolation", s.topicIsolation},
		{"Shutdown", s.shutdown},
	}
	t.Run("Cases", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.fn(t)
			})
		}
	})
	t.Run(restartCase, s.brokerRestart)
}

type suite struct {
	f       Features
	factory Factory
}

// UniqueName returns a lower-case name, unique to this run, made of prefix,
// the end of the test's name and a random suffix: safe as a topic, queue or
// group name on every broker. Suites built on this one use it for isolation.
func UniqueName(t *testing.T, prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := strings.ToLower(t.Name())
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		base = base[i+1:]
	}
	var sb strings.Builder
	for _, r := range base {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			sb.WriteRune(r)
		}
	}
	base = sb.String()
	if len(base) > 20 {
		base = base[:20]
	}
	return fmt.Sprintf("%s_%s_%s", prefix, base, hex.EncodeToString(b[:]))
}

// env is one case's backend plus its unique topic.
type env struct {
	t     *testing.T
	f     Features
	b     Backend
	topic string
}

func (s *suite) newEnv(t *testing.T, groups int) (*env, []string) {
	t.Helper()
	e := &env{t: t, f: s.f, b: s.factory(t), topic: UniqueName(t, "t")}
	gs := make([]string, groups)
	for i := range gs {
		gs[i] = UniqueName(t, fmt.Sprintf("g%d", i))
	}
	e.setup(e.topic, gs...)
	return e, gs
}

func (e *env) setup(topic string, groups ...string) {
	e.t.Helper()
	if e.b.Setup == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.f.Timeout)
	defer cancel()
	if err := e.b.Setup(ctx, topic, groups...); err != nil {
		e.t.Fatalf("setup topic %s groups %v: %v", topic, groups, err)
	}
}

// publish publishes msgs and fails the test on error.
func (e *env) publish(msgs ...broker.Message) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e.f.Timeout)
	defer cancel()
	if err := e.b.Publisher.Publish(ctx, msgs...); err != nil {
		e.t.Fatalf("publish %d messages: %v", len(msgs), err)
	}
}

// subscription is a running Subscribe call.
type subscription struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// subscribe starts Subscribe in a goroutine. The test's cleanup stops it.
func (e *env) subscribe(sub broker.Subscription, h broker.Handler) *subscription {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscription{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		s.err = e.b.Subscriber.Subscribe(ctx, sub, h)
	}()
	e.t.Cleanup(func() { s.stop(e.t, e.f.Timeout) })
	return s
}

// stop cancels the subscription and waits for Subscribe to return, failing
// the test if it does not within timeout or returns an error.
func (s *subscription) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(timeout):
		t.Errorf("Subscribe did not return within %v of cancellation", timeout)
		return
	}
	if s.err != nil {
		t.Errorf("Subscribe returned %v after cancellation, want nil", s.err)
	}
}

// running reports whether Subscribe has not returned yet.
func (s *subscription) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// tally counts deliveries by message ID and closes full once want distinct
// IDs have been seen.
type tally struct {
	mu    sync.Mutex
	want  int
	seen  map[string]int
	dups  int
	full  chan struct{}
	order []broker.Delivery
}

func newTally(want int) *tally {
	return &tally{want: want, seen: make(map[string]int), full: make(chan struct{})}
}

// add records d and reports whether it was a duplicate.
func (c *tally) add(d broker.Delivery) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[d.ID]++
	c.order = append(c.order, d)
	if c.seen[d.ID] > 1 {
		c.dups++
		return true
	}
	if len(c.seen) == c.want {
		close(c.full)
	}
	return false
}

func (c *tally) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

func (c *tally) duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dups
}

func (c *tally) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// wait blocks until every wanted ID was seen, failing the test at timeout.
func (c *tally) wait(t *testing.T, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-c.full:
	case <-time.After(timeout):
		t.Fatalf("%s: saw %d of %d distinct messages after %v", what, c.distinct(), c.want, timeout)
	}
}

// settle waits a little for late duplicates to show before counting them.
func settle() { time.Sleep(300 * time.Millisecond) }

// checkDuplicates reports the duplicate count and fails on an exactly-once
// broker.
func (e *env) checkDuplicates(c *tally, total int, what string) {
	e.t.Helper()
	d := c.duplicates()
	e.t.Logf("%s: %d duplicates over %d messages (%.3f%%)", what, d, total, 100*float64(d)/float64(total))
	if e.f.ExactlyOnce && d != 0 {
		e.t.Errorf("%s: %d duplicates on an exactly-once broker", what, d)
	}
}

// SeqMessage returns a message for topic and key whose payload and "seq"
// header carry seq, so a consumer can check per-key order.
func SeqMessage(topic, key string, seq int) broker.Message {
	m := broker.NewMessage(topic, []byte(fmt.Sprintf("%s/%d", key, seq)))
	m.Key = key
	m.Headers = map[string]string{"seq": fmt.Sprint(seq)}
	return m
}
