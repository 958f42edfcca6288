// Package outboxtest is the conformance suite every outbox.Store
// implementation runs, and the relay suite that proves the Relay's
// guarantees on a store and a broker.
//
// A store's test calls Run with a factory that gives each case a fresh, empty
// outbox:
//
//	func TestConformance(t *testing.T) {
//		outboxtest.Run(t, func(t *testing.T) outboxtest.Harness {
//			store := newStoreOnFreshTable(t)
//			return outboxtest.Harness{Store: store, Enqueue: ...}
//		})
//	}
//
// Run covers the Store contract (claims, per-key exclusivity, claim
// deadlines, failures, parking, redrive, cleanup, stats, late commits,
// crashes) and then the relay
// cases on the in-process memory broker. RunRelay runs the relay cases on any
// broker: concurrent writers drained by several relays exactly once in
// per-key order; a poison message parked after exactly MaxAttempts while
// other keys flow, then redriven; a broker outage that charges nothing and
// drains afterwards; bad rows parked at once; notifications and polling
// waking the relay; rolled-back transactions publishing nothing and late
// commits published in commit order; and relays killed at injected points
// (after publish before commit, mid-batch, connection dropped) with nothing
// lost, duplicates bounded by the batches in flight, and, with an idempotent
// consumer, every effect applied once.
package outboxtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/outbox"
)

// Harness is what a factory gives each case: a store on a fresh, empty
// outbox and the means to write into it.
type Harness struct {
	// Store is the store under test. Required.
	Store outbox.Store
	// Enqueue writes msgs in one committed transaction, in argument order.
	// Required.
	Enqueue func(ctx context.Context, msgs ...broker.Message) error
	// Begin starts a transaction that writes rows. Cases that need one
	// (rollback, late commit) are skipped when it is nil.
	Begin func(ctx context.Context) (Tx, error)
	// Open returns another handle on the same outbox with its own
	// connections, as another process would open it. Relays in the relay
	// cases each get one. When nil they share Store.
	Open func(t *testing.T) outbox.Store
	// Crash, when set, abruptly ends every session of the given store (as
	// a process crash or a dropped connection would): claims it holds must be
	// released by the backend, not by the client. The crash cases are
	// skipped when it is nil.
	Crash func(ctx context.Context, s outbox.Store) error
	// Corrupt, when set, writes a row whose message can never be published:
	// empty topic, or headers that cannot be decoded. The bad-row case uses
	// it; without it only oversized rows are tested.
	Corrupt func(ctx context.Context, kind Corruption, key string) error
	// Diagnose, when set, describes the state of the outbox for a failure
	// message: for example the backend's sessions, the locks they hold and
	// the pending rows. Cases that time out waiting for a relay report it.
	Diagnose func(ctx context.Context) string
}

// Corruption names a kind of bad row for Harness.Corrupt.
type Corruption int

const (
	// EmptyTopic is a row without a topic.
	EmptyTopic Corruption = iota
	// BadHeaders is a row whose headers are not a JSON object of strings
	// (or whatever the store's encoding makes undecodable).
	BadHeaders
)

// Tx is a transaction that writes outbox rows.
type Tx interface {
	Enqueue(ctx context.Context, msgs ...broker.Message) error
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// Factory returns a fresh harness for one case and registers its cleanup
// with t.Cleanup.
type Factory func(t *testing.T) Harness

// Broker is a broker the relay cases publish to and consume from.
type Broker struct {
	Publisher  broker.Publisher
	Subscriber broker.Subscriber
	// Setup, when set, prepares a topic and a consumer group before a case
	// publishes (create a Kafka topic, declare RabbitMQ queues).
	Setup func(ctx context.Context, topic, group string) error
	// Limits are the protocol limits the publisher enforces; the
	// ProtocolLimits case writes one row breaking each and is skipped
	// without any.
	Limits brokertest.Limits
}

// BrokerFactory returns a broker for one case.
type BrokerFactory func(t *testing.T) Broker

// MemoryBroker is the BrokerFactory of the in-process memory broker.
func MemoryBroker(t *testing.T) Broker {
	b := memory.New(memory.Config{})
	t.Cleanup(func() { _ = b.Close() })
	return Broker{Publisher: b, Subscriber: b}
}

// Options tunes the relay cases.
type Options struct {
	// Messages is the message count of the drain case. Default 10,000.
	Messages int
	// Keys is the number of keys of the drain case. Default 100.
	Keys int
	// Writers is the number of concurrent writers. Default 8.
	Writers int
	// Relays is the number of relays that drain at once. Default 3.
	Relays int
	// BatchSize is the relays' batch size. Default 200.
	BatchSize int
	// CrashRounds is how many times each kill point is exercised in the
	// crash case. Default 3.
	CrashRounds int
	// Timeout bounds each wait. Default 2 minutes.
	Timeout time.Duration
	// Logger receives the relays' logs. Default: discarded.
	Logger *slog.Logger
	// Effects, when set, gives the crash case an idempotent consumer: a
	// handler that applies each delivery's effect at most once (for example
	// idempotency/postgres Store.Handler writing a row in the claiming
	// transaction), and a function that reports how many times each
	// message's effect was applied, by message ID. The case then requires
	// every effect exactly once, duplicates notwithstanding.
	Effects func(t *testing.T) (h broker.Handler, applied func(ctx context.Context) (map[string]int, error))
}

func (o Options) withDefaults() Options {
	if o.Messages <= 0 {
		o.Messages = 10000
	}
	if o.Keys <= 0 {
		o.Keys = 100
	}
	if o.Writers <= 0 {
		o.Writers = 8
	}
	if o.Relays <= 0 {
		o.Relays = 3
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 200
	}
	if o.CrashRounds <= 0 {
		o.CrashRounds = 3
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Run runs the store cases, then the relay cases on the memory broker with
// opts. Cases run in parallel, each on its own harness.
func Run(t *testing.T, factory Factory, opts Options) {
	s := &storeSuite{factory: factory}
	t.Run("Store", func(t *testing.T) {
		for _, c := range []struct {
			name string
			fn   func(*testing.T)
		}{
			{"RoundTrip", s.roundTrip},
			{"ClaimOrder", s.claimOrder},
			{"KeyExclusive", s.keyExclusive},
			{"Release", s.release},
			{"ClaimDeadline", s.claimDeadline},
			{"RetryBlocksKey", s.retryBlocksKey},
			{"ParkRedriveDelete", s.parkRedriveDelete},
			{"DeadBlocksKey", s.deadBlocksKey},
			{"CleanupAndDelete", s.cleanup},
			{"Stats", s.stats},
			{"Rollback", s.rollback},
			{"LateCommit", s.lateCommit},
			{"CrashReleases", s.crashReleases},
			{"ClaimRace", func(t *testing.T) { s.claimRace(t, 16, 60) }},
			{"ClaimRaceHotKeys", func(t *testing.T) { s.claimRace(t, 2, 300) }},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.fn(t)
			})
		}
	})
	t.Run("Relay", func(t *testing.T) { RunRelay(t, factory, MemoryBroker, opts) })
}

// ctxT returns a context bounded by d and cancelled at t's cleanup.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// SeqMessage returns a message for topic and key whose payload and "seq"
// header carry seq, which Tally uses to check per-key order.
func SeqMessage(topic, key string, seq int) broker.Message {
	return brokertest.SeqMessage(topic, key, seq)
}

// Tally records what a consumer received: distinct messages, duplicates,
// and per-key order of first deliveries (by the "seq" header of
// SeqMessage).
type Tally struct {
	mu    sync.Mutex
	want  int
	seen  map[string]int      // message ID -> deliveries
	first map[string][]int    // key -> seq of first deliveries, in arrival order
	all   map[string][]string // key -> every delivery's seq, in arrival order
	dups  int
	full  chan struct{}
	done  bool
}

// NewTally returns a tally that is full once want distinct messages
// arrived.
func NewTally(want int) *Tally {
	return &Tally{want: want, seen: map[string]int{}, first: map[string][]int{}, all: map[string][]string{},
		full: make(chan struct{})}
}

// Add records a delivery and reports whether it was a duplicate.
func (c *Tally) Add(m broker.Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[m.ID]++
	seq := m.Header("seq")
	c.all[m.Key] = append(c.all[m.Key], seq)
	if c.seen[m.ID] > 1 {
		c.dups++
		return true
	}
	n, _ := strconv.Atoi(seq)
	c.first[m.Key] = append(c.first[m.Key], n)
	if !c.done && len(c.seen) >= c.want {
		c.done = true
		close(c.full)
	}
	return false
}

// Handler returns a handler that adds every delivery.
func (c *Tally) Handler() broker.Handler {
	return func(_ context.Context, d broker.Delivery) error {
		c.Add(d.Message)
		return nil
	}
}

// Distinct is the number of distinct messages received.
func (c *Tally) Distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// Duplicates is the number of deliveries beyond the first of a message.
func (c *Tally) Duplicates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dups
}

// Count is how often the message with id was delivered.
func (c *Tally) Count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// Wait blocks until the tally is full, failing t after timeout.
func (c *Tally) Wait(t testing.TB, timeout time.Duration, what string) {
	t.Helper()
	select {
	case <-c.full:
	case <-time.After(timeout):
		t.Fatalf("%s: received %d of %d distinct messages after %v", what, c.Distinct(), c.want, timeout)
	}
}

// CheckOrder fails t unless, for each key, the first deliveries arrived in
// seq order 0, 1, 2, ... perKey[key]-1 with nothing missing. Duplicates are
// ignored: they are what at-least-once delivery allows.
func (c *Tally) CheckOrder(t testing.TB, perKey map[string]int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	bad := 0
	keys := make([]string, 0, len(perKey))
	for k := range perKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		got := c.first[k]
		at := -1
		for i := range got {
			if got[i] != i {
				at = i
				break
			}
		}
		if at < 0 && len(got) != perKey[k] {
			at = len(got)
		}
		if at >= 0 {
			if bad++; bad <= 3 {
				t.Errorf("key %s: %d first deliveries, want %d in seq order; first difference at %d: %s; all deliveries: %s",
					k, len(got), perKey[k], at, around(got, at), strings.Join(c.all[k], " "))
			}
		}
	}
	if bad > 3 {
		t.Errorf("... and %d more keys out of order", bad-3)
	}
}

// CheckNoDuplicates fails t if any message arrived twice.
func (c *Tally) CheckNoDuplicates(t testing.TB) {
	t.Helper()
	if d := c.Duplicates(); d != 0 {
		t.Errorf("%d duplicate deliveries; want exactly once", d)
	}
}

// around formats s[at-5:at+5].
func around(s []int, at int) string {
	lo, hi := max(at-5, 0), min(at+5, len(s))
	return fmt.Sprintf("...%v...", s[lo:hi])
}

// FaultyPublisher wraps a publisher with injectable faults. The zero hooks
// pass every call through.
type FaultyPublisher struct {
	Next broker.Publisher
	// Before runs before each call; an error fails the call as a whole and
	// nothing is published.
	Before func(ctx context.Context, msgs []broker.Message) error
	// Reject is asked about each message; an error refuses that message: it
	// is not published and is reported in a *broker.PublishError while the
	// others are published. Like a partitioned broker, it keeps per-key
	// order within a call: once a message is refused, the later messages of
	// its key in the call are refused too, without asking Reject.
	Reject func(m broker.Message) error
	// After runs after Next accepted the messages; an error replaces the
	// call's nil result (the messages were published nonetheless).
	After func(ctx context.Context, msgs []broker.Message) error
	// MaxBytes, when positive, is the size limit MaxMessageBytes reports
	// (the limit a relay checks rows against); otherwise it reports Next's.
	MaxBytes int

	mu    sync.Mutex
	calls int
	sent  int
}

// MaxMessageBytes implements broker.SizeLimiter: MaxBytes, or Next's limit
// (0 when Next does not say).
func (f *FaultyPublisher) MaxMessageBytes() int {
	if f.MaxBytes > 0 {
		return f.MaxBytes
	}
	if l, ok := f.Next.(broker.SizeLimiter); ok {
		return l.MaxMessageBytes()
	}
	return 0
}

// Publish implements broker.Publisher.
func (f *FaultyPublisher) Publish(ctx context.Context, msgs ...broker.Message) error {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if f.Before != nil {
		if err := f.Before(ctx, msgs); err != nil {
			return err
		}
	}
	send := msgs
	var failures []broker.PublishFailure
	if f.Reject != nil {
		send = make([]broker.Message, 0, len(msgs))
		refused := map[string]bool{}
		for i, m := range msgs {
			if m.Key != "" && refused[m.Key] {
				failures = append(failures, broker.PublishFailure{Index: i, ID: m.ID,
					Err: fmt.Errorf("outboxtest: not sent: an earlier message of key %q was refused", m.Key)})
				continue
			}
			if err := f.Reject(m); err != nil {
				failures = append(failures, broker.PublishFailure{Index: i, ID: m.ID, Err: err})
				refused[m.Key] = m.Key != ""
				continue
			}
			send = append(send, m)
		}
	}
	if len(send) > 0 {
		if err := f.Next.Publish(ctx, send...); err != nil {
			return err
		}
		f.mu.Lock()
		f.sent += len(send)
		f.mu.Unlock()
	}
	if len(failures) > 0 {
		return &broker.PublishError{Failures: failures}
	}
	if f.After != nil {
		return f.After(ctx, msgs)
	}
	return nil
}

// Calls is the number of Publish calls so far.
func (f *FaultyPublisher) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Sent is the number of messages passed to Next and accepted.
func (f *FaultyPublisher) Sent() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent
}

// errFault is the error injected faults return.
var errFault = errors.New("outboxtest: injected fault")

// Eventually polls cond, with a growing pause of up to 200ms, until it
// holds, failing t at timeout with the state cond last described. It is a
// liveness bound for waits, not a timing assertion.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := 5 * time.Millisecond
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached after %v: %s", what, timeout, state)
		}
		time.Sleep(pause)
		pause = min(pause*2, 200*time.Millisecond)
	}
}
