package dlq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq/internal/metrics"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Retries says where a failed message waits for its next attempt. It is the
// choice between per-key order and non-blocking retries.
type Retries int

const (
	// RetryInProcess retries inside the handler call: the middleware waits
	// Policy.Backoff and calls the handler again, up to MaxAttempts times,
	// then dead-letters the message and acknowledges it. The message's key
	// (its partition with Kafka's OrderPerPartition) is blocked meanwhile,
	// so per-key order holds for every message that is not dead-lettered;
	// the cost is that one failing message delays the later messages of its
	// key by the sum of its backoffs. This is the default.
	RetryInProcess Retries = iota
	// RetryRedeliver returns a retryable error to the broker adapter, which
	// redelivers the message with Delivery.Attempt one higher; the
	// middleware counts attempts from Delivery.Attempt and dead-letters
	// the message on attempt MaxAttempts. The adapter decides where the
	// message waits: Kafka and the memory broker retry it in place after
	// their own backoff (blocking its key, order kept, Policy's backoff
	// unused); a RabbitMQ subscriber with rabbitmq.Groups.Retry sends it
	// down its TTL/dead-letter-exchange chain (non-blocking: later messages
	// of the key go first). With a RabbitMQ retry chain set
	// Policy.MaxAttempts to the chain's MaxAttempts, so the middleware
	// dead-letters the message with its envelope on the last attempt
	// instead of letting it reach the chain's parking queue.
	RetryRedeliver
	// RetryTopics acknowledges a failed message after publishing it to a
	// retry topic (RetryTopic(topic, group, n) for attempt n, the last
	// level taking every further retry) with its retry state and due time
	// in envelope headers. Consumer.Subscribe consumes the retry topics
	// too, waiting on each message until it is due. Retries never block:
	// later messages of the key are handled while a failed one waits, so
	// per-key order is lost for messages that are retried. Requires
	// Consumer.Subscribe (a bare Middleware would publish retries nobody
	// consumes).
	RetryTopics
)

func (r Retries) String() string {
	switch r {
	case RetryInProcess:
		return "in_process"
	case RetryRedeliver:
		return "redeliver"
	case RetryTopics:
		return "retry_topic"
	}
	return "Retries(" + strconv.Itoa(int(r)) + ")"
}

// DeadLetterTopic is the default Config.DeadLetterTopic:
// "<topic>.<group>.dlq", one dead-letter destination per topic and group.
func DeadLetterTopic(e Envelope) string { return e.Topic + "." + e.Group + ".dlq" }

// RetryTopic is the default Config.RetryTopic: "<topic>.<group>.retry.<level>".
func RetryTopic(topic, group string, level int) string {
	return topic + "." + group + ".retry." + strconv.Itoa(level)
}

// DefaultMaxWait is the default Config.MaxWait.
const DefaultMaxWait = 5 * time.Second

// ErrNotDue is returned by retry-topic handlers for a message whose due
// time has not come within Config.MaxWait, so the broker adapter hands it
// back later instead of one handler waiting indefinitely (which would hold
// up rebalances and shutdown). It is not a failure of the message.
var ErrNotDue = errors.New("dlq: retry not due yet")

// Config configures a Consumer. Publisher is required. Zero fields take
// their documented defaults; a negative value turns a setting off where its
// field says so, and is rejected elsewhere.
type Config struct {
	// Publisher publishes dead letters and, with RetryTopics, retries.
	// Required.
	Publisher broker.Publisher
	// Policy bounds attempts and backoff. The zero value is 5 attempts
	// with exponential backoff from 100ms (see Policy).
	Policy Policy
	// Classify decides whether a failure is worth retrying. Default
	// Classify: Permanent errors are dead-lettered at once, others retried.
	Classify Classifier
	// Retries chooses where failed messages wait: RetryInProcess (the
	// default; blocking, per-key order kept), RetryRedeliver or RetryTopics
	// (non-blocking).
	Retries Retries
	// DeadLetterTopic names the dead-letter destination of a message from
	// its envelope (for RabbitMQ it is an exchange). Default
	// DeadLetterTopic: "<topic>.<group>.dlq".
	DeadLetterTopic func(Envelope) string
	// Name identifies the handler in the envelope (HeaderHandler). Default
	// empty: the header is left out.
	Name string

	// Subscriber consumes the topic given to Consumer.Subscribe. Required
	// by Subscribe only.
	Subscriber broker.Subscriber
	// RetrySubscriber consumes the retry topics (RetryTopics only).
	// Default Subscriber. A retry-topic consumer waits on each message
	// until it is due, so for Kafka give it a subscriber with
	// kafka.OrderPerPartition: then a waiting message holds up only its own
	// partition, whose later messages are due later anyway.
	RetrySubscriber broker.Subscriber
	// RetryLevels is the number of retry topics (RetryTopics only).
	// Default Policy.MaxAttempts-1: one topic per retry. With fewer, the
	// last level takes every further retry.
	RetryLevels int
	// RetryTopic names the retry topic of a level (1-based) for a topic
	// and group. Default RetryTopic: "<topic>.<group>.retry.<level>".
	RetryTopic func(topic, group string, level int) string
	// MaxWait bounds how long a retry-topic handler waits for a message to
	// become due before returning ErrNotDue (the adapter then hands the
	// message back after its retry backoff, which can make the retry late
	// by that backoff, never early). Default DefaultMaxWait (5s).
	MaxWait time.Duration

	// Logger receives dead-letter events (Warn), failed dead-letter
	// publishes (Error) and retries (Debug). Default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the counters steadfast.dlq.dead_lettered,
	// steadfast.dlq.retried and steadfast.dlq.dead_letter_failures.
	// Default: the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
}

func (c Config) withDefaults() (Config, error) {
	if c.Publisher == nil {
		return c, fmt.Errorf("%w: Config.Publisher is nil", ErrInvalidConfig)
	}
	if err := c.Policy.Validate(); err != nil {
		return c, err
	}
	c.Policy = c.Policy.WithDefaults()
	switch c.Retries {
	case RetryInProcess, RetryRedeliver, RetryTopics:
	default:
		return c, fmt.Errorf("%w: unknown Config.Retries %d", ErrInvalidConfig, int(c.Retries))
	}
	if c.RetryLevels < 0 || c.MaxWait < 0 {
		return c, fmt.Errorf("%w: negative RetryLevels or MaxWait", ErrInvalidConfig)
	}
	if c.Classify == nil {
		c.Classify = Classify
	}
	if c.DeadLetterTopic == nil {
		c.DeadLetterTopic = DeadLetterTopic
	}
	if c.RetrySubscriber == nil {
		c.RetrySubscriber = c.Subscriber
	}
	c.RetryLevels = cmp.Or(c.RetryLevels, c.Policy.MaxAttempts-1)
	if c.RetryTopic == nil {
		c.RetryTopic = RetryTopic
	}
	c.MaxWait = cmp.Or(c.MaxWait, DefaultMaxWait)
	c.Logger = telemetry.Logger(c.Logger)
	return c, nil
}

// Consumer adds bounded retries and dead-lettering to message handlers.
// Create it with New; it is safe for concurrent use.
//
// A handler error is classified (Config.Classify). A transient failure is
// retried as Config.Retries says, up to Policy.MaxAttempts attempts in
// all; a permanent failure, or the failure of the last attempt, publishes
// the message to its dead-letter destination (Config.DeadLetterTopic) with
// the original payload and headers plus an Envelope in headers, and then
// acknowledges the original, so a poison message never blocks a partition
// or queue for good. A handler panic counts as a transient failure.
//
// Nothing is lost: when publishing the dead letter (or the retry) fails,
// the handler returns that error and the adapter does not acknowledge the
// original, which is delivered again. When the handler fails while its
// context is cancelled (the subscription is shutting down), the error is
// returned as it is, without counting the attempt, so the message is
// delivered again after the restart.
//
// Counting attempts: the handler sees Delivery.Attempt as the message's
// attempt number across all of the above, and the middleware dead-letters
// the message when that number reaches Policy.MaxAttempts. A message
// consumed from a retry topic continues the count in its envelope.
// Otherwise the count continues the adapter's Delivery.Attempt: a delivery
// with Attempt n is taken to follow n-1 failed attempts, and gets the
// attempts left (at least one). With RetryInProcess one delivery makes all
// its attempts inside one handler call, so the adapter's count only grows
// when the middleware itself returned an error (shutdown, or a dead-letter
// publish that failed); such a message may get more attempts in all than
// MaxAttempts, never fewer than one. With RetryRedeliver every attempt is
// a delivery and the two counts are the same. Kafka keeps no delivery
// count, so a Kafka message redelivered after a crash or a rebalance starts
// again at 1; RabbitMQ's retry chain counts in the x-death history, which
// survives restarts.
//
// The envelope's first failure time spans deliveries too: the Consumer
// remembers (bounded, in memory) when a message it handed back to the
// broker first failed, so a message redelivered to the same process keeps
// it; elsewhere the history starts at the first failure seen there.
//
// Envelope headers on a delivery are honoured only on the Consumer's own
// retry topics (Subscribe with RetryTopics): on a main topic a producer
// could forge them to skip retries, rename the message or choose where its
// dead letter goes, so they are stripped there, unread, and a warning is
// logged. On a retry topic the message keeps the delivery's ID and key and
// the subscription's topic and group, and its attempt count is clamped to
// [1, MaxAttempts-1].
//
// Dead letters always fit the publisher's size limit (broker.SizeLimiter,
// or the limit a broker.ErrMessageTooLarge refusal reveals, taken as the
// original message's size): the error text is cut first, then the payload
// and if need be the original headers are left out (Envelope.PayloadOmitted,
// HeadersOmitted, OriginalSize), logged at ERROR. A message too large for a
// retry topic with its envelope is retried in process instead.
//
// Put the Consumer's middleware outside deduplication middleware, so that
// a dead-lettered message is not recorded as processed and its replay is
// handled.
type Consumer struct {
	cfg   Config
	tel   *metrics.Instruments
	log   *slog.Logger
	first firstFailures
	limit int // the publisher's size limit, or 0 when it does not say
}

// maxTracked bounds the first-failure times a Consumer remembers for
// messages it handed back to the broker.
const maxTracked = 10_000

// firstFailures remembers when messages handed back to the broker (with
// RetryRedeliver, or on shutdown) first failed, so the envelope of a
// message dead-lettered on a later delivery in the same process keeps its
// first failure time. It is bounded: past maxTracked entries an arbitrary
// one is forgotten, and that message's envelope then starts its failure
// history at the first failure this process still knows of.
type firstFailures struct {
	mu sync.Mutex
	m  map[string]time.Time
}

func failureKey(d broker.Delivery) string { return d.Group + "\x00" + d.Topic + "\x00" + d.ID }

func (f *firstFailures) get(d broker.Delivery) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.m[failureKey(d)]
	return t, ok
}

func (f *firstFailures) put(d broker.Delivery, t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := failureKey(d)
	if _, ok := f.m[k]; ok {
		return
	}
	if f.m == nil {
		f.m = make(map[string]time.Time)
	}
	if len(f.m) >= maxTracked {
		for old := range f.m {
			delete(f.m, old)
			break
		}
	}
	f.m[k] = t
}

func (f *firstFailures) forget(d broker.Delivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, failureKey(d))
}

// New validates cfg and returns a Consumer.
func New(cfg Config) (*Consumer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tel, err := metrics.New(cfg.MeterProvider)
	if err != nil {
		return nil, fmt.Errorf("dlq: metrics: %w", err)
	}
	c := &Consumer{cfg: cfg, tel: tel, log: cfg.Logger}
	if l, ok := cfg.Publisher.(broker.SizeLimiter); ok {
		c.limit = max(l.MaxMessageBytes(), 0)
	}
	return c, nil
}

// Middleware returns the retry and dead-letter middleware for handlers the
// caller subscribes itself. With RetryTopics use Subscribe instead, which
// also consumes the retry topics. The middleware treats every delivery as
// one of a main topic: envelope headers it carries are stripped unread
// (see Consumer).
func (c *Consumer) Middleware() broker.Middleware {
	return func(next broker.Handler) broker.Handler { return c.wrap(next, nil, nil) }
}

// Topics returns the topics the consumer publishes to for topic and group:
// the retry topics (with RetryTopics) and the dead-letter topic, in that
// order. Brokers that do not create topics on first use (Kafka by default)
// need them created beforehand; see package kafkadlq.
func (c *Consumer) Topics(topic, group string) []string {
	var out []string
	if c.cfg.Retries == RetryTopics {
		for level := 1; level <= c.cfg.RetryLevels; level++ {
			out = append(out, c.cfg.RetryTopic(topic, group, level))
		}
	}
	return append(out, c.cfg.DeadLetterTopic(Envelope{Topic: topic, Group: group, Partition: -1, Offset: -1}))
}

// Subscribe consumes sub with h wrapped in the retry and dead-letter
// middleware, on Config.Subscriber, until ctx is cancelled (it returns nil)
// or a subscription fails (it returns that error). With RetryTopics it also
// consumes every retry topic of sub.Topic and sub.Group, with the same
// group and concurrency, on Config.RetrySubscriber; each retry-topic
// handler waits until its message is due before calling h.
//
// Waits between in-process attempts end when ctx is cancelled: the message
// stays unacknowledged and is delivered again after the restart.
func (c *Consumer) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	if c.cfg.Subscriber == nil {
		return fmt.Errorf("%w: Config.Subscriber is nil", ErrInvalidConfig)
	}
	if c.cfg.Retries != RetryTopics || c.cfg.RetryLevels == 0 {
		return c.cfg.Subscriber.Subscribe(ctx, sub, c.wrap(h, ctx.Done(), nil))
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, c.cfg.RetryLevels+1)
	go func() { errs <- c.cfg.Subscriber.Subscribe(runCtx, sub, c.wrap(h, runCtx.Done(), nil)) }()
	for level := 1; level <= c.cfg.RetryLevels; level++ {
		rs := broker.Subscription{Topic: c.cfg.RetryTopic(sub.Topic, sub.Group, level), Group: sub.Group, Concurrency: sub.Concurrency}
		rh := c.retryHandler(c.wrap(h, runCtx.Done(), &sub), runCtx.Done())
		go func() {
			err := c.cfg.RetrySubscriber.Subscribe(runCtx, rs, rh)
			if err != nil {
				err = fmt.Errorf("dlq: retry topic %q: %w", rs.Topic, err)
			}
			errs <- err
		}()
	}
	var first error
	for range c.cfg.RetryLevels + 1 {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// retryHandler waits until a retry-topic message is due, at most MaxWait
// per call, then hands it to next.
func (c *Consumer) retryHandler(next broker.Handler, stop <-chan struct{}) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		env, err := ParseEnvelope(d.Headers)
		if err == nil && !env.Due.IsZero() {
			if wait := time.Until(env.Due); wait > 0 {
				if !sleep(ctx, stop, min(wait, c.cfg.MaxWait)) {
					return ErrNotDue
				}
				if time.Now().Before(env.Due) {
					return ErrNotDue
				}
			}
		}
		return next(ctx, d)
	}
}

// wrap is the middleware. stop, when not nil, ends in-process waits.
// retryOf is nil on a main topic; on a retry topic it is the main
// subscription the retry topic belongs to, and the only place where the
// middleware reads an envelope.
func (c *Consumer) wrap(next broker.Handler, stop <-chan struct{}, retryOf *broker.Subscription) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		return c.handle(ctx, next, d, stop, retryOf)
	}
}

func (c *Consumer) handle(ctx context.Context, next broker.Handler, d broker.Delivery, stop <-chan struct{}, retryOf *broker.Subscription) error {
	orig, env, prior, carried := c.start(d, retryOf)
	// tracked: this process may remember the message's first failure.
	tracked := !carried && prior > 0
	if tracked {
		if t, ok := c.first.get(d); ok {
			env.FirstFailure = t
		}
	}
	// handBack remembers the first failure of a message that goes back to
	// the broker unacknowledged, for its next delivery.
	handBack := func(err error) error {
		if !carried && !env.FirstFailure.IsZero() {
			c.first.put(d, env.FirstFailure)
		}
		return err
	}
	for {
		attempt := prior + 1
		od := orig
		od.Attempt = attempt
		od.Redelivered = d.Redelivered || attempt > 1
		err := call(ctx, next, od)
		if err == nil {
			if tracked {
				c.first.forget(d)
			}
			return nil
		}
		if ctx.Err() != nil {
			return handBack(err)
		}
		now := time.Now()
		env.Attempts = attempt
		env.LastFailure = now
		if env.FirstFailure.IsZero() {
			env.FirstFailure = now
		}
		env.Error = truncate(err.Error(), MaxErrorBytes)
		env.Class = c.cfg.Classify(err)
		env.Due = time.Time{}
		if env.Class == ClassPermanent || attempt >= c.cfg.Policy.MaxAttempts {
			if derr := c.deadLetter(ctx, d.Topic, orig, env, err); derr != nil {
				return handBack(derr)
			}
			if tracked {
				c.first.forget(d)
			}
			return nil
		}
		wait := c.cfg.Policy.Delay(attempt)
		c.tel.Retry(ctx, env.Topic, env.Group, c.cfg.Retries.String())
		c.log.Debug("dlq: handler failed, retrying", "topic", env.Topic, "group", env.Group, "id", orig.ID,
			"attempt", attempt, "max_attempts", c.cfg.Policy.MaxAttempts, "backoff", wait, "retries", c.cfg.Retries.String(), "err", err)
		switch c.cfg.Retries {
		case RetryRedeliver:
			return handBack(err)
		case RetryTopics:
			ferr := c.forward(ctx, orig, env, now.Add(wait), err)
			if ferr == nil {
				if tracked {
					c.first.forget(d)
				}
				return nil
			}
			if !errors.Is(ferr, errNoRoom) {
				return handBack(ferr)
			}
			// Too large for a retry topic with its envelope: retried
			// in process instead, as RetryInProcess would.
		}
		if !sleep(ctx, stop, wait) {
			return handBack(err)
		}
		prior = attempt
	}
}

// start returns the delivery the handler sees, the envelope so far, the
// number of attempts made before this delivery, and whether that count
// came from an envelope the delivery carried (a retry-topic message).
//
// Envelope headers are honoured on retry topics only (retryOf not nil),
// where the Consumer itself wrote them, and even there they never rename
// the message: its ID and key are the delivery's, its topic and group the
// main subscription's, and the attempt count is clamped to
// [1, MaxAttempts-1] (a retry-topic message failed at least once and was
// not dead-lettered). On a main topic, envelope headers are a producer's
// forgery (or a dead letter fed back by hand): they are stripped, unread,
// so they can neither shorten the retries, nor change the ID or topic the
// handler sees, nor choose where the dead letter goes.
func (c *Consumer) start(d broker.Delivery, retryOf *broker.Subscription) (broker.Delivery, Envelope, int, bool) {
	forged := hasEnvelope(d.Headers)
	if retryOf == nil {
		if forged {
			c.log.Warn("dlq: ignoring dead-letter envelope headers on a main topic (only retry topics carry them)",
				"topic", d.Topic, "group", d.Group, "id", d.ID)
			d.Headers = Strip(d.Headers)
		}
		return d, newEnvelope(d, c.cfg.Name), max(d.Attempt-1, 0), false
	}
	// A retry topic: the message belongs to the main subscription.
	orig := d
	orig.Headers = Strip(d.Headers)
	orig.Topic, orig.Group = retryOf.Topic, retryOf.Group
	env, err := ParseEnvelope(d.Headers)
	if err != nil {
		if forged {
			c.log.Warn("dlq: ignoring a malformed envelope", "topic", d.Topic, "id", d.ID, "err", err)
		}
		orig.Partition, orig.Offset, orig.Queue = -1, -1, ""
		return orig, newEnvelope(orig, c.cfg.Name), 0, false
	}
	if !env.Time.IsZero() {
		orig.Time = env.Time
	}
	orig.Partition, orig.Offset, orig.Queue = env.Partition, env.Offset, env.Queue
	env.ID, env.Topic, env.Key, env.Group, env.Time = orig.ID, orig.Topic, orig.Key, orig.Group, orig.Time
	env.Handler = c.cfg.Name
	env.Attempts = min(max(env.Attempts, 1), max(c.cfg.Policy.MaxAttempts-1, 1))
	return orig, env, env.Attempts, true
}

// hasEnvelope reports whether h carries any envelope header. It looks at
// each header once (a delivery has few), not up each envelope name.
func hasEnvelope(h map[string]string) bool {
	for k := range h {
		if strings.HasPrefix(k, HeaderPrefix) && slices.Contains(envelopeHeaders[:], k) {
			return true
		}
	}
	return false
}

// call runs h, turning a panic into an error.
func call(ctx context.Context, h broker.Handler, d broker.Delivery) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("dlq: handler panicked: %v", r)
		}
	}()
	return h(ctx, d)
}

// sleep waits d, or until ctx or stop ends; it reports whether it waited.
func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-stop:
	}
	return false
}

// deadLetter publishes orig with env to its dead-letter destination.
// consumed is the topic the delivery came from.
//
// The dead letter always fits the publisher's size limit when the
// original message did: its error text is cut to the room left; when the
// envelope does not fit beside the payload even without error text, the
// payload is left out (Envelope.PayloadOmitted), and then the original
// headers too (Envelope.HeadersOmitted). The same steps follow a publish
// refused with broker.ErrMessageTooLarge (a limit the publisher does not
// report, or the broker's own), so a message is never retried forever for
// its size.
func (c *Consumer) deadLetter(ctx context.Context, consumed string, orig broker.Delivery, env Envelope, cause error) error {
	reason := "exhausted"
	if env.Class == ClassPermanent {
		reason = "permanent"
	}
	topic := c.cfg.DeadLetterTopic(env)
	if topic == "" || topic == consumed {
		return fmt.Errorf("dlq: message %s failed on %q, whose dead-letter destination is %q itself; leaving it unacknowledged: %w",
			orig.ID, consumed, topic, cause)
	}
	limit := c.limit
	var err error
	for omit := 0; omit <= 2; omit++ {
		o, e := orig, env
		if omit > 0 {
			e.PayloadOmitted, e.OriginalSize, o.Payload = true, orig.Size(), nil
		}
		if omit > 1 {
			e.HeadersOmitted, o.Headers = true, nil
		}
		msg, ok := c.fit(o, e, topic, limit)
		if !ok && omit < 2 {
			continue
		}
		if err = c.cfg.Publisher.Publish(ctx, msg); err == nil {
			if omit > 0 {
				c.log.Error("dlq: message dead-lettered without its payload: with its envelope it exceeds the size limit",
					"topic", env.Topic, "group", env.Group, "id", orig.ID, "dead_letter_topic", topic,
					"size", orig.Size(), "limit", limit, "headers_omitted", omit > 1)
			}
			c.tel.DeadLetter(ctx, env.Topic, env.Group, env.Class.String(), reason)
			c.log.Warn("dlq: message dead-lettered", "topic", env.Topic, "group", env.Group, "id", orig.ID,
				"dead_letter_topic", topic, "attempts", env.Attempts, "class", env.Class.String(), "reason", reason, "err", cause)
			return nil
		}
		if !errors.Is(err, broker.ErrMessageTooLarge) || ctx.Err() != nil {
			break
		}
		if limit == 0 || limit > orig.Size() {
			// A limit below the one reported, or none reported: the
			// dead letter must be no larger than the original was.
			limit = orig.Size()
			omit--
		}
	}
	c.tel.PublishFailure(ctx, env.Topic, env.Group)
	c.log.Error("dlq: dead-letter publish failed; the message stays unacknowledged", "topic", env.Topic,
		"group", env.Group, "id", orig.ID, "dead_letter_topic", topic, "attempts", env.Attempts, "err", err, "cause", cause)
	return fmt.Errorf("dlq: dead-letter message %s to %q after %d attempts (%v): %w", orig.ID, topic, env.Attempts, cause, err)
}

// errNoRoom: a message does not fit the size limit with its envelope.
var errNoRoom = errors.New("dlq: no room for the envelope within the size limit")

// fit returns the outgoing message of orig with env to topic, its error
// text cut so that it fits limit (none when limit is 0), and whether it
// fits.
func (c *Consumer) fit(orig broker.Delivery, env Envelope, topic string, limit int) (broker.Message, bool) {
	msg := c.outgoing(orig, env, topic)
	if limit <= 0 {
		return msg, true
	}
	over := msg.Size() - limit
	if over <= 0 {
		return msg, true
	}
	have := len(msg.Headers[HeaderError])
	if have < over {
		return msg, false
	}
	msg.Headers[HeaderError] = truncate(env.Error, have-over)
	return msg, msg.Size() <= limit
}

// forward publishes orig with env to the retry topic of its attempt. It
// returns an error wrapping errNoRoom, without publishing, when the
// message does not fit the size limit with its envelope even without
// error text.
func (c *Consumer) forward(ctx context.Context, orig broker.Delivery, env Envelope, due time.Time, cause error) error {
	env.Due = due
	level := min(env.Attempts, c.cfg.RetryLevels)
	topic := c.cfg.RetryTopic(env.Topic, env.Group, level)
	limit := c.limit
	for {
		msg, ok := c.fit(orig, env, topic, limit)
		if !ok {
			c.log.Warn("dlq: message too large for a retry topic with its envelope; retrying it in process", "topic", env.Topic,
				"group", env.Group, "id", orig.ID, "retry_topic", topic, "size", orig.Size(), "limit", limit)
			return fmt.Errorf("dlq: message %s of %d bytes to retry topic %q: %w", orig.ID, orig.Size(), topic, errNoRoom)
		}
		err := c.cfg.Publisher.Publish(ctx, msg)
		if err == nil {
			return nil
		}
		if errors.Is(err, broker.ErrMessageTooLarge) && (limit == 0 || limit > orig.Size()) && ctx.Err() == nil {
			limit = orig.Size()
			continue
		}
		c.tel.PublishFailure(ctx, env.Topic, env.Group)
		c.log.Error("dlq: retry publish failed; the message stays unacknowledged", "topic", env.Topic,
			"group", env.Group, "id", orig.ID, "retry_topic", topic, "attempts", env.Attempts, "err", err, "cause", cause)
		return fmt.Errorf("dlq: publish message %s to retry topic %q after attempt %d (%v): %w", orig.ID, topic, env.Attempts, cause, err)
	}
}

// outgoing is orig addressed to topic with env in its headers. It keeps the
// ID, key, payload and headers; its time is now, so that retention on the
// destination counts from the failure (the original time is in the
// envelope).
func (c *Consumer) outgoing(orig broker.Delivery, env Envelope, topic string) broker.Message {
	h := Strip(orig.Headers)
	if h == nil {
		h = make(map[string]string, 16)
	}
	env.SetHeaders(h)
	return broker.Message{ID: orig.ID, Topic: topic, Key: orig.Key, Payload: orig.Payload, Headers: h, Time: time.Now()}
}
