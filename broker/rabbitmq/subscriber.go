package rabbitmq

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// SubscriberConfig tunes a Subscriber. The zero value is ready to use.
// Zero fields take their documented defaults; a negative value turns a
// setting off where its field says so, and is rejected elsewhere.
type SubscriberConfig struct {
	// Groups maps topics and groups to exchanges and queues.
	Groups Groups
	// Prefetch is the number of unacknowledged deliveries the broker sends
	// each member ahead (basic.qos). Default DefaultPrefetch (1000), or 4 ×
	// Subscription.Concurrency when that is more (at most 65535).
	//
	// The default is measured: with 1 KB persistent messages a member
	// consumes as fast as a raw amqp091 consumer with prefetch 1000 (a
	// prefetch of 64 ran at three quarters of that rate: the member waited
	// for the broker between bursts). The cost is memory and fairness: a
	// member may hold Prefetch deliveries it has not started (up to
	// Prefetch × the message size; lower it for large messages), and
	// they go back to the queue only when it stops or fails (see
	// Subscriber), instead of going to another member of a competing
	// group meanwhile.
	Prefetch int
	// MaxAttempts is the number of handler attempts one delivery gets
	// before the subscriber rejects it (nack without requeue), which hands
	// it to the queue's dead-letter exchange: without one, the broker
	// discards it. Until then a failed delivery is retried in process,
	// after RetryBackoff, holding back the later messages of its key. Zero
	// means no limit without Groups.Retry, and 1 with it (every failure
	// goes down the retry chain at once).
	MaxAttempts int
	// RetryBackoff is the wait before the next in-process attempt, by the
	// number of the attempt that failed. Zero means DefaultRetryBackoff();
	// otherwise zero fields take broker.Backoff's defaults.
	RetryBackoff broker.Backoff
	// DrainTimeout bounds how long a stopping member waits for running
	// handlers before cancelling their context. Their results are still
	// recorded when they return. Default DefaultDrainTimeout (30s).
	DrainTimeout time.Duration
	// Logger overrides the connection's logger.
	Logger *slog.Logger
}

// DefaultRetryBackoff returns the schedule SubscriberConfig.RetryBackoff
// uses when zero: 5ms after the first failure, doubling, at most 1s,
// without jitter.
func DefaultRetryBackoff() broker.Backoff {
	return broker.Backoff{Initial: 5 * time.Millisecond, Max: time.Second, Jitter: -1}
}

func (c SubscriberConfig) withDefaults(conn *Conn) (SubscriberConfig, error) {
	if c.Prefetch < 0 || c.Prefetch > 65535 || c.MaxAttempts < 0 || c.DrainTimeout < 0 {
		return c, fmt.Errorf("%w: SubscriberConfig: Prefetch must be in [0, 65535], MaxAttempts and DrainTimeout not negative", ErrInvalidConfig)
	}
	if _, err := c.Groups.Topology("t", "g"); err != nil {
		return c, fmt.Errorf("%w: SubscriberConfig.Groups: %w", ErrInvalidConfig, err)
	}
	if c.MaxAttempts == 0 && c.Groups.Retry != nil {
		c.MaxAttempts = 1
	}
	if err := c.RetryBackoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: SubscriberConfig.RetryBackoff: %w", ErrInvalidConfig, err)
	}
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff())
	c.DrainTimeout = cmp.Or(c.DrainTimeout, DefaultDrainTimeout)
	if c.Logger == nil {
		c.Logger = conn.log
	}
	return c, nil
}

// Subscriber consumes broker topics from RabbitMQ (see Groups for the
// mapping of topics and groups to exchanges and queues).
//
// Delivery: at least once. Deliveries are acknowledged manually, one by one,
// after the handler returned nil; a handler error retries the delivery in
// process with a growing Delivery.Attempt (see SubscriberConfig.MaxAttempts
// and Groups.Retry for handing failures to the broker instead). A handler
// that panics counts as failed.
//
// Order: within a member, deliveries sharing a non-empty key run one at a
// time in queue order, while different keys run in parallel up to
// Subscription.Concurrency. Across the members of a group the order holds
// because group queues have a single active consumer (unless
// Groups.Competing).
//
// Failures: when the connection or channel is lost the member waits for its
// running handlers (their acks cannot be delivered any more: the broker has
// already requeued those messages, which come back with Redelivered set),
// reconnects with backoff and consumes again. When the broker cancels the
// consumer because its queue was deleted, Subscribe returns an error
// matching ErrConsumerCancelled.
//
// Shutdown: cancelling Subscribe's ctx stops taking deliveries, waits for
// the running handlers (their context stays alive for DrainTimeout), acks
// their successes, then closes the channel, which returns the deliveries
// not yet started to the queue, in order. On a quorum queue the broker may
// drop the last acks sent before the channel closes (RabbitMQ issue 10327)
// and redeliver those messages too, with Redelivered set.
type Subscriber struct {
	conn *Conn
	cfg  SubscriberConfig
	log  *slog.Logger
	tel  *instruments
	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
	mu   sync.Mutex
	done bool
}

var _ broker.Subscriber = (*Subscriber)(nil)

// NewSubscriber returns a subscriber on conn.
func NewSubscriber(conn *Conn, cfg SubscriberConfig) (*Subscriber, error) {
	if conn == nil {
		return nil, fmt.Errorf("%w: nil *Conn", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults(conn)
	if err != nil {
		return nil, err
	}
	s := &Subscriber{conn: conn, cfg: cfg, log: cfg.Logger, tel: conn.tel}
	s.life, s.stop = context.WithCancel(context.Background())
	return s, nil
}

// Close makes running Subscribe calls drain (as on cancellation) and return
// broker.ErrClosed, and waits for them: for their running handlers
// (DrainTimeout at most), then for the broker to acknowledge the closing of
// their channels (Config.CloseTimeout at most). Later calls fail with
// broker.ErrClosed. The connection stays open.
func (s *Subscriber) Close() error {
	s.mu.Lock()
	s.done = true
	s.mu.Unlock()
	s.stop()
	s.wg.Wait()
	return nil
}

// Setup declares the exchange of topic and the queues (and retry chains) of
// groups, as Subscribe does, so that messages published before the first
// Subscribe call are kept. It is idempotent; the declarations are repeated
// after every reconnect. Like Conn.Declare, it returns when ctx ends, even
// while the broker does not answer.
func (s *Subscriber) Setup(ctx context.Context, topic string, groups ...string) error {
	return s.cfg.Groups.Declare(ctx, s.conn, topic, groups...)
}

// Topology returns what Setup declares.
func (s *Subscriber) Topology(topic string, groups ...string) (Topology, error) {
	return s.cfg.Groups.Topology(topic, groups...)
}

// Subscribe declares the group's topology, joins the group as a new member
// and runs h until ctx is cancelled (it then drains and returns nil), the
// Subscriber is closed (broker.ErrClosed), or consumption fails for good: an
// error matching ErrConsumerCancelled when the queue was deleted, or the
// declaration error. A ctx that ends while the broker does not answer a
// declaration or the start of consuming ends the call as well.
func (s *Subscriber) Subscribe(ctx context.Context, sub broker.Subscription, h broker.Handler) error {
	if err := brokerimpl.CheckSubscribe(sub, h); err != nil {
		return err
	}
	sub = brokerimpl.WithDefaults(sub)
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		return fmt.Errorf("rabbitmq: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	// runCtx ends with ctx or when the subscriber closes.
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(s.life, func() { cancel(broker.ErrClosed) })()

	if err := s.Setup(runCtx, sub.Topic, sub.Group); err != nil {
		if runCtx.Err() != nil {
			return s.endErr(ctx, sub)
		}
		return fmt.Errorf("rabbitmq: subscribe %q/%q: %w", sub.Topic, sub.Group, err)
	}
	prefetch := s.cfg.Prefetch
	prefetch = cmp.Or(prefetch, min(max(4*sub.Concurrency, DefaultPrefetch), 65535))
	var tag [6]byte
	_, _ = rand.Read(tag[:])
	m := &member{
		s:        s,
		sub:      sub,
		h:        h,
		queue:    s.cfg.Groups.QueueFor(sub.Topic, sub.Group),
		src:      s.cfg.Groups.source(sub.Topic, sub.Group),
		prefetch: prefetch,
		tag:      "steadfast." + sub.Group + "." + hex.EncodeToString(tag[:]),
		sem:      make(chan struct{}, sub.Concurrency),
	}
	if err := m.run(runCtx); err != nil {
		if runCtx.Err() != nil {
			return s.endErr(ctx, sub)
		}
		return err
	}
	return s.endErr(ctx, sub)
}

// endErr is what Subscribe returns once it stopped because ctx ended (nil)
// or the subscriber closed.
func (s *Subscriber) endErr(ctx context.Context, sub broker.Subscription) error {
	if ctx.Err() == nil {
		return fmt.Errorf("rabbitmq: subscribe %q/%q: %w", sub.Topic, sub.Group, broker.ErrClosed)
	}
	return nil
}

// member is one Subscribe call.
type member struct {
	s        *Subscriber
	sub      broker.Subscription
	h        broker.Handler
	queue    string
	src      source // what decoding needs to know of queue
	prefetch int
	tag      string
	sem      chan struct{} // one token per running handler
}

type endReason int

const (
	endStop endReason = iota
	endLost
	endCancelled
)

// run consumes until runCtx ends (returns nil) or consumption fails for
// good. Handler contexts carry runCtx's values and outlive it by
// DrainTimeout.
func (m *member) run(runCtx context.Context) error {
	log := m.s.log.With("queue", m.queue, "consumer", m.tag)
	for {
		ch, err := m.s.conn.channel(runCtx)
		if err != nil {
			if runCtx.Err() != nil {
				return nil
			}
			return fmt.Errorf("rabbitmq: subscribe %q: %w", m.queue, err)
		}
		deliveries, cancels, err := m.consume(runCtx, ch)
		if err != nil {
			if isAbandoned(err) {
				return nil // runCtx ended; ch is closed once the broker answers
			}
			m.s.conn.closeChannels(ch)
			if lostDuring(err) {
				log.Debug("rabbitmq: connection lost while starting to consume, retrying", "err", err)
				if perr := m.s.conn.pause(runCtx); perr != nil {
					return nil
				}
				continue
			}
			if amqpCode(err) == amqp.NotFound {
				err = fmt.Errorf("%w: %w", ErrNotFound, err)
			}
			return fmt.Errorf("rabbitmq: consume %q: %w", m.queue, err)
		}
		sess := &session{m: m, ch: ch, lanes: map[string]*lane{}, stopCh: make(chan struct{})}
		sess.hctx, sess.cancel = context.WithCancel(context.WithoutCancel(runCtx))
		stopTimer := context.AfterFunc(runCtx, func() {
			t := time.NewTimer(m.s.cfg.DrainTimeout)
			defer t.Stop()
			select {
			case <-t.C:
				sess.cancel()
			case <-sess.hctx.Done():
			}
		})
		reason := sess.dispatch(runCtx, deliveries, cancels)
		sess.drain()
		stopTimer()
		sess.cancel()
		m.s.conn.closeChannels(ch)
		switch reason {
		case endStop:
			return nil
		case endLost:
			log.Warn("rabbitmq: consumer channel lost, resuming after reconnect")
			continue
		case endCancelled:
			exists, err := m.queueExists(runCtx)
			switch {
			case err != nil:
				log.Warn("rabbitmq: consumer cancelled and the queue could not be checked, resuming", "err", err)
				continue
			case exists:
				log.Warn("rabbitmq: consumer cancelled by the broker, queue still exists, resuming")
				continue
			}
			return fmt.Errorf("rabbitmq: subscribe %q/%q: queue %q deleted: %w", m.sub.Topic, m.sub.Group, m.queue, ErrConsumerCancelled)
		}
	}
}

// consume starts consuming on ch. It returns when ctx ends, even while the
// broker does not answer, with an error matching isAbandoned: ch is then
// closed once the broker answers, which returns to the queue whatever was
// delivered to the consumer meanwhile.
func (m *member) consume(ctx context.Context, ch *amqp.Channel) (<-chan amqp.Delivery, <-chan string, error) {
	var (
		cancels <-chan string
		d       <-chan amqp.Delivery
	)
	err := chanCall(ctx, ch, func() error {
		if err := ch.Qos(m.prefetch, 0, false); err != nil {
			return err
		}
		cancels = ch.NotifyCancel(make(chan string, 1))
		var err error
		d, err = ch.Consume(m.queue, m.tag, false, false, false, false, nil)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return d, cancels, nil
}

// queueExists checks the queue with a passive declaration. It returns an
// error only when the check could not be made, or when ctx ended first.
func (m *member) queueExists(ctx context.Context) (bool, error) {
	ch, err := m.s.conn.channel(ctx)
	if err != nil {
		return false, err
	}
	err = chanCall(ctx, ch, func() error {
		_, err := ch.QueueDeclarePassive(m.queue, true, false, false, false, nil)
		return err
	})
	if !isAbandoned(err) {
		release(ctx, ch) // closed by the broker already when NOT_FOUND
	}
	switch {
	case err == nil:
		return true, nil
	case amqpCode(err) == amqp.NotFound:
		return false, nil
	}
	return false, err
}

// session is one consumer on one channel. Deliveries are queued per key in
// lanes; each lane runs its deliveries one after the other.
type session struct {
	m  *member
	ch *amqp.Channel
	// hctx is the context of handlers: the values of the subscription's
	// ctx, cancelled DrainTimeout after it ends or when the session is
	// over.
	hctx   context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	lanes    map[string]*lane
	stopping bool
	stopCh   chan struct{}
	wg       sync.WaitGroup
}

type lane struct {
	jobs []*job
}

type job struct {
	tag  uint64
	redl bool
	info delivered
}

func (s *session) dispatch(ctx context.Context, deliveries <-chan amqp.Delivery, cancels <-chan string) endReason {
	for {
		select {
		case <-ctx.Done():
			return endStop
		case d, ok := <-deliveries:
			if !ok {
				select {
				case _, ok := <-cancels:
					if ok {
						return endCancelled
					}
				default:
				}
				return endLost
			}
			s.add(&d)
		}
	}
}

func (s *session) add(d *amqp.Delivery) {
	j := &job{tag: d.DeliveryTag, redl: d.Redelivered, info: fromDelivery(d, s.m.src)}
	key := j.info.msg.Key
	key = cmp.Or(key, "\x00"+strconv.FormatUint(d.DeliveryTag, 10))
	s.mu.Lock()
	l := s.lanes[key]
	start := l == nil
	if start {
		l = &lane{}
		s.lanes[key] = l
	}
	l.jobs = append(l.jobs, j)
	s.mu.Unlock()
	if start {
		s.wg.Add(1)
		go s.runLane(key, l)
	}
}

// drain stops the lanes and waits for the handlers running in them.
// Deliveries not started stay unacknowledged; closing the channel returns
// them to the queue.
func (s *session) drain() {
	s.mu.Lock()
	s.stopping = true
	close(s.stopCh)
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *session) runLane(key string, l *lane) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		if s.stopping || len(l.jobs) == 0 {
			delete(s.lanes, key)
			s.mu.Unlock()
			return
		}
		j := l.jobs[0]
		l.jobs[0] = nil
		l.jobs = l.jobs[1:]
		s.mu.Unlock()
		if !s.process(j) {
			s.mu.Lock()
			delete(s.lanes, key)
			s.mu.Unlock()
			return
		}
	}
}

// process runs the handler for j until it succeeds, is rejected, or the
// session stops (false: j stays unacknowledged and goes back to the queue).
func (s *session) process(j *job) bool {
	cfg := &s.m.s.cfg
	if j.info.undecodable != "" {
		return s.rejectUndecodable(j)
	}
	base := firstAttempt(j.info, j.redl, cfg.MaxAttempts)
	for local := 0; ; local++ {
		select {
		case s.m.sem <- struct{}{}:
		case <-s.stopCh:
			return false
		}
		attempt := int(min(base+int64(local), maxAttempt))
		err := s.call(j, attempt)
		<-s.m.sem
		tel := s.m.s.tel
		if err == nil {
			if aerr := s.ch.Ack(j.tag, false); aerr != nil {
				s.m.s.log.Debug("rabbitmq: ack failed; the message will be redelivered", "queue", s.m.queue, "id", j.info.msg.ID, "err", aerr)
				return false
			}
			tel.consumed.Add(context.Background(), 1, tel.ack)
			return true
		}
		if cfg.MaxAttempts > 0 && local+1 >= cfg.MaxAttempts {
			s.m.s.log.Info("rabbitmq: rejecting message to the dead-letter exchange", "queue", s.m.queue, "id", j.info.msg.ID, "attempt", attempt, "err", err)
			if nerr := s.ch.Nack(j.tag, false, false); nerr != nil {
				s.m.s.log.Debug("rabbitmq: reject failed; the message will be redelivered", "queue", s.m.queue, "id", j.info.msg.ID, "err", nerr)
				return false
			}
			tel.consumed.Add(context.Background(), 1, tel.reject)
			return true
		}
		tel.consumed.Add(context.Background(), 1, tel.retry)
		s.m.s.log.Debug("rabbitmq: handler failed, retrying", "queue", s.m.queue, "id", j.info.msg.ID, "attempt", attempt, "err", err)
		t := time.NewTimer(cfg.RetryBackoff.Delay(attempt))
		select {
		case <-t.C:
		case <-s.stopCh:
			t.Stop()
			return false
		}
	}
}

// call runs the handler once with a context that outlives the
// subscription's ctx by DrainTimeout, turning a panic into an error.
func (s *session) call(j *job, attempt int) (err error) {
	d := broker.Delivery{
		Message:     j.info.msg,
		Attempt:     attempt,
		Redelivered: attempt > 1 || j.redl,
		Group:       s.m.sub.Group,
		Partition:   -1,
		Offset:      -1,
		Queue:       s.m.queue,
		DeliveryTag: j.tag,
	}
	tel := s.m.s.tel
	sctx, span := tel.spans.Process(s.hctx, d)
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("rabbitmq: handler panicked: %v", r)
		}
		tel.processDur.Record(context.Background(), time.Since(start).Seconds(), tel.sys)
		telemetry.End(span, err)
	}()
	return s.m.h(sctx, d)
}
