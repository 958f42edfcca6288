package rabbitmq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// PublisherConfig tunes a Publisher. The zero value is ready to use.
// Zero fields take their documented defaults; a negative value turns a
// setting off where its field says so, and is rejected elsewhere.
type PublisherConfig struct {
	// Channels is the number of AMQP channels publishes are spread over
	// (round robin, one channel per call), so that a large batch filling
	// one channel's window does not hold up the calls behind it. Each
	// Publish call uses one channel for all its messages, which keeps
	// their order. Concurrent calls on a channel share its window: their
	// messages are in flight together, each matched to its confirm by
	// delivery tag. Each channel costs a goroutine here and a process on
	// the broker, and wakes its goroutine for its own confirms: fewer
	// channels spend a little less CPU per message, more keep a small
	// call from waiting behind a large batch's window. Default
	// DefaultChannels (1): on a quiet 2-core machine, 16 goroutines
	// publishing one message per call reached 3,865-4,479 msg/s on one
	// channel and 3,307-3,740 on four, in each of three interleaved rounds
	// of BenchmarkPublishConcurrent. Set 2 to 4 when small calls must not
	// wait behind large batches.
	Channels int
	// Window is the largest number of messages a channel has sent but the
	// broker has not yet confirmed. Publish streams a batch up to this
	// window instead of waiting for each confirm, and concurrent calls
	// wait for room only when it is full. Default DefaultWindow (1000),
	// the window of the raw amqp091 publisher the adapter is measured
	// against (bench_test.go), which one call of 20,000 messages matches;
	// a larger window holds more unconfirmed messages, all resent after a
	// connection loss.
	Window int
	// MaxMessageBytes is the largest broker.Message.Size accepted. Default
	// broker.DefaultMaxMessageBytes.
	MaxMessageBytes int
	// Transient publishes with delivery mode 1: messages are not written to
	// disk and are lost when the broker restarts. Default: persistent.
	Transient bool
	// ExchangeKind is the kind of exchange declared (durable) when a
	// message's topic names an exchange that does not exist. Default
	// ExchangeTopic.
	ExchangeKind ExchangeKind
	// NoDeclare makes a publish to a missing exchange fail with ErrNotFound
	// instead of declaring the exchange.
	NoDeclare bool
	// MaxChannelErrors bounds how often one message is sent again after
	// the broker closed its channel with an error (a refused property, a
	// deleted exchange) while the connection stayed up. Connection losses
	// are retried until ctx ends. Default DefaultMaxChannelErrors (3).
	MaxChannelErrors int
	// Logger overrides the connection's logger.
	Logger *slog.Logger
}

func (c PublisherConfig) withDefaults(conn *Conn) (PublisherConfig, error) {
	switch {
	case c.Channels < 0, c.Window < 0, c.MaxMessageBytes < 0, c.MaxChannelErrors < 0:
		return c, fmt.Errorf("%w: negative PublisherConfig field", ErrInvalidConfig)
	case c.Channels > 1024:
		return c, fmt.Errorf("%w: PublisherConfig.Channels %d > 1024", ErrInvalidConfig, c.Channels)
	}
	c.Channels = cmp.Or(c.Channels, DefaultChannels)
	c.Window = cmp.Or(c.Window, DefaultWindow)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	c.ExchangeKind = cmp.Or(c.ExchangeKind, ExchangeTopic)
	if err := (Exchange{Name: "x", Kind: c.ExchangeKind}).validate(); err != nil {
		return c, fmt.Errorf("%w: PublisherConfig.ExchangeKind %q", ErrInvalidConfig, c.ExchangeKind)
	}
	c.MaxChannelErrors = cmp.Or(c.MaxChannelErrors, DefaultMaxChannelErrors)
	if c.Logger == nil {
		c.Logger = conn.log
	}
	return c, nil
}

// Publisher publishes broker messages to RabbitMQ: Message.Topic is the
// exchange and Message.Key the routing key.
//
// Every message is published persistent (unless Transient), with the
// mandatory flag, on a channel in confirm mode. Publish returns nil only
// when the broker confirmed every message, which for a persistent message
// routed to durable queues means it is on disk (or replicated, for quorum
// queues). A message no queue is bound for comes back as an error matching
// ErrUnroutable: it is never silently dropped. Confirms are awaited as a
// window (PublisherConfig.Window) rather than one round trip per message,
// and calls are spread over a pool of channels.
//
// Concurrent calls share confirm windows: a call sends its messages on its
// channel without waiting for the confirms of other calls on that channel,
// and waits only for its own, matched by delivery tag (a nack or a
// basic.return is the error of the call whose message it names, and of no
// other). Goroutines publishing one message per call, as request handlers
// do, therefore have all their messages in flight at once, as with a raw
// amqp091 channel shared through PublishWithDeferredConfirm. Order holds
// within a call (one channel, sent in order, resent in order); calls that
// run concurrently are not ordered with each other, and a caller that
// waits for each call keeps the order of its calls.
//
// When the connection is lost, messages not yet confirmed are sent again
// on the next connection, until ctx ends: Publish either succeeds after the
// reconnect or returns an error naming the unconfirmed messages. A message
// whose confirm was lost with the connection may thus be enqueued twice;
// consumers deduplicate on Message.ID.
//
// Message mapping: ID is the AMQP message-id, Time the timestamp property
// (seconds) plus a steadfast-time header with nanoseconds, the headers
// type, content-type, correlation-id, content-encoding, reply-to and app-id
// travel in their AMQP properties when non-empty, other headers as string
// headers. A Subscriber restores the message exactly.
type Publisher struct {
	conn  *Conn
	cfg   PublisherConfig
	log   *slog.Logger
	mode  uint8
	chans []*pubChannel
	next  atomic.Uint32

	exchanges sync.Map // exchange name -> struct{}: known to exist

	closeMu  sync.RWMutex
	closed   bool
	life     context.Context // cancelled by Close
	stop     context.CancelFunc
	inflight sync.WaitGroup
}

var (
	_ broker.Publisher   = (*Publisher)(nil)
	_ broker.SizeLimiter = (*Publisher)(nil)
)

// NewPublisher returns a publisher on conn. Channels are opened on first
// use.
func NewPublisher(conn *Conn, cfg PublisherConfig) (*Publisher, error) {
	if conn == nil {
		return nil, fmt.Errorf("%w: nil *Conn", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults(conn)
	if err != nil {
		return nil, err
	}
	p := &Publisher{conn: conn, cfg: cfg, log: cfg.Logger, mode: amqp.Persistent}
	p.life, p.stop = context.WithCancel(context.Background())
	if cfg.Transient {
		p.mode = amqp.Transient
	}
	p.chans = make([]*pubChannel, cfg.Channels)
	for i := range p.chans {
		p.chans[i] = &pubChannel{p: p, lock: make(chan struct{}, 1), sem: make(chan struct{}, cfg.Window)}
	}
	return p, nil
}

// MaxMessageBytes returns the largest Message.Size Publish accepts
// (PublisherConfig.MaxMessageBytes). It implements broker.SizeLimiter.
func (p *Publisher) MaxMessageBytes() int { return p.cfg.MaxMessageBytes }

// Close stops the publisher: later Publish calls fail with
// broker.ErrClosed, calls waiting for a reconnect give up with
// broker.ErrClosed, and Close waits for the calls in flight to get their
// confirms (or fail, when the connection is lost or their ctx ends) before
// it closes the channels. Closing the channels waits at most
// Config.CloseTimeout for the broker, however many there are. The
// connection stays open.
func (p *Publisher) Close() error {
	p.closeMu.Lock()
	if p.closed {
		p.closeMu.Unlock()
		return nil
	}
	p.closed = true
	p.stop()
	p.closeMu.Unlock()
	p.inflight.Wait()
	chs := make([]*amqp.Channel, 0, len(p.chans))
	for _, pc := range p.chans {
		if ch := pc.detach(); ch != nil {
			chs = append(chs, ch)
		}
	}
	p.conn.closeChannels(chs...)
	return nil
}

func (p *Publisher) enter() bool {
	p.closeMu.RLock()
	defer p.closeMu.RUnlock()
	if p.closed {
		return false
	}
	p.inflight.Add(1)
	return true
}

// outMsg is one message of a Publish call on its way.
type outMsg struct {
	idx      int // position in the Publish call
	exchange string
	key      string
	pub      amqp.Publishing
	chErrs   int   // channel errors seen so far
	lost     error // why a send got no confirm, when the connection was lost
}

// outcome of one send.
type outcome struct {
	err    error
	lost   bool        // channel or connection died before the confirm
	unsent bool        // not sent at all
	why    *amqp.Error // the channel's close reason, when lost
}

// Publish publishes msgs and returns when the broker confirmed all of them
// (see Publisher). Invalid messages reject the whole call before anything
// is sent. When some messages fail, the error is a *broker.PublishError
// listing them; their errors match ErrUnroutable, ErrNacked,
// ErrConnectionLost, ErrNotFound, broker.ErrClosed or the ctx error.
//
// Publish returns when ctx ends, also while it opens a channel of the pool
// or checks an exchange and the broker does not answer (a connection up at
// the TCP level whose broker went silent): the messages not sent are then
// failures matching the ctx error. Sending on an open channel to an exchange
// known to exist waits for nothing but window room and confirms.
func (p *Publisher) Publish(ctx context.Context, msgs ...broker.Message) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rabbitmq: publish: %w", err)
	}
	msgs, err = brokerimpl.Normalize(msgs, p.cfg.MaxMessageBytes)
	if err != nil {
		return err
	}
	if err := checkLimits(msgs, p.conn.frameMax()); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if !p.enter() {
		return fmt.Errorf("rabbitmq: publish: %w", broker.ErrClosed)
	}
	defer p.inflight.Done()

	start := time.Now()
	tel := p.conn.tel
	ctx, span := tel.spans.Publish(ctx, msgs)
	defer func() {
		failed := 0
		var pe *broker.PublishError
		if errors.As(err, &pe) {
			failed = len(pe.Failures)
		}
		tel.sent.Add(ctx, int64(len(msgs)-failed), tel.sys)
		if failed > 0 {
			tel.sent.Add(ctx, int64(failed), tel.sysFailed)
		}
		tel.sendDur.Record(ctx, time.Since(start).Seconds(), tel.sys)
		telemetry.End(span, err)
	}()

	// wctx also ends when the publisher closes: waits for a reconnect or
	// for window room give up then, waits for confirms do not.
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(p.life, func() { cancel(broker.ErrClosed) })()

	failures := make([]error, len(msgs))
	oms := make([]outMsg, len(msgs)) // one allocation for the call
	todo := make([]*outMsg, 0, len(msgs))
	badTopic := map[string]error{}
	for i, m := range msgs {
		if _, seen := badTopic[m.Topic]; !seen {
			badTopic[m.Topic] = p.ensureExchange(wctx, m.Topic)
		}
		if e := badTopic[m.Topic]; e != nil {
			failures[i] = e
			continue
		}
		oms[i] = outMsg{idx: i, exchange: m.Topic, key: m.Key, pub: toPublishing(m, p.mode)}
		todo = append(todo, &oms[i])
	}

	for len(todo) > 0 {
		pc := p.chans[int(p.next.Add(1))%len(p.chans)]
		results := pc.publish(ctx, wctx, todo)
		var again []*outMsg
		for i, r := range results {
			om := todo[i]
			switch {
			case r.err == nil:
			case r.lost && wctx.Err() == nil:
				if r.why == nil || !r.why.Server || !isChannelException(r.why.Code) {
					om.lost = r.err // the broker may have enqueued it
				} else {
					if r.why.Code == amqp.NotFound {
						p.exchanges.Delete(om.exchange)
						if e := p.ensureExchange(wctx, om.exchange); e != nil {
							failures[om.idx] = e
							continue
						}
					}
					om.chErrs++
					if om.chErrs >= p.cfg.MaxChannelErrors {
						failures[om.idx] = fmt.Errorf("rabbitmq: publish to %q: channel closed by the broker %d times: %w", om.exchange, om.chErrs, r.err)
						continue
					}
				}
				again = append(again, om)
			case om.lost != nil && r.unsent:
				// Sent before, unconfirmed, then not sent again: the
				// broker may hold it.
				failures[om.idx] = fmt.Errorf("rabbitmq: publish: not confirmed (%v; the broker may have enqueued it), and not sent again: %w", om.lost, r.err)
			default:
				failures[om.idx] = r.err
			}
		}
		todo = again
		if len(todo) > 0 {
			p.log.Debug("rabbitmq: resending unconfirmed messages", "count", len(todo))
		}
	}

	p.warnUnroutable(msgs, failures)
	var pe broker.PublishError
	for i, e := range failures {
		if e != nil {
			pe.Failures = append(pe.Failures, broker.PublishFailure{Index: i, ID: msgs[i].ID, Err: e})
		}
	}
	if len(pe.Failures) > 0 {
		return &pe
	}
	return nil
}

func isChannelException(code int) bool {
	switch code {
	case amqp.AccessRefused, amqp.NotFound, amqp.ResourceLocked, amqp.PreconditionFailed:
		return true
	}
	return false
}

// ensureExchange makes sure the exchange exists: a passive declaration,
// then (unless NoDeclare) a durable declaration of ExchangeKind. The answer
// is cached until a publish finds the exchange gone.
func (p *Publisher) ensureExchange(ctx context.Context, name string) error {
	if _, ok := p.exchanges.Load(name); ok {
		return nil
	}
	for {
		err := p.checkExchange(ctx, name)
		if err == nil {
			p.exchanges.Store(name, struct{}{})
			return nil
		}
		if !lostDuring(err) || ctx.Err() != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				return fmt.Errorf("rabbitmq: check exchange %q: %w", name, cause)
			}
			return err
		}
		if perr := p.conn.pause(ctx); perr != nil {
			return fmt.Errorf("rabbitmq: check exchange %q: %w (after %v)", name, perr, err)
		}
	}
}

// checkExchange makes one attempt of ensureExchange. It returns when ctx
// ends, even while the broker does not answer (see await).
func (p *Publisher) checkExchange(ctx context.Context, name string) error {
	ch, err := p.conn.channel(ctx)
	if err != nil {
		return err
	}
	err = chanCall(ctx, ch, func() error {
		return ch.ExchangeDeclarePassive(name, string(p.cfg.ExchangeKind), true, false, false, false, nil)
	})
	if isAbandoned(err) {
		return fmt.Errorf("rabbitmq: check exchange %q: %w", name, err)
	}
	release(ctx, ch) // closed by the broker already when NOT_FOUND
	if amqpCode(err) != amqp.NotFound {
		return err
	}
	if p.cfg.NoDeclare {
		return fmt.Errorf("rabbitmq: publish: exchange %q: %w", name, ErrNotFound)
	}
	ch2, err := p.conn.channel(ctx)
	if err != nil {
		return err
	}
	err = chanCall(ctx, ch2, func() error {
		return ch2.ExchangeDeclare(name, string(p.cfg.ExchangeKind), true, false, false, false, nil)
	})
	if !isAbandoned(err) {
		release(ctx, ch2)
	}
	if err != nil {
		return &DeclareError{Entity: "exchange", Name: fmt.Sprintf("%q (%s)", name, p.cfg.ExchangeKind), Err: err}
	}
	return nil
}

// pubChannel is one slot of the channel pool. Its AMQP channel is replaced
// when it dies.
type pubChannel struct {
	p    *Publisher
	lock chan struct{} // a mutex that can be abandoned when ctx ends
	sem  chan struct{} // one token per unconfirmed message
	cs   *chanState    // guarded by lock
}

// chanState is one AMQP channel in confirm mode and the messages it has
// sent and not yet had confirmed.
type chanState struct {
	ch       *amqp.Channel
	mu       sync.Mutex
	pending  map[uint64]pendingMsg
	unmarked map[ident]uint64 // outstanding messages sent without headerSeq
	dead     bool
}

// ident is what a basic.return carries to find the message it returns.
type ident struct{ exchange, key, id string }

type pendingMsg struct {
	b        *sendBatch
	i        int
	id       ident
	returned *amqp.Return
}

// sendBatch collects the outcomes of the messages one publish sent.
type sendBatch struct {
	mu   sync.Mutex
	out  []sendOutcome
	left int
	done chan struct{}
}

type sendOutcome struct {
	outcome
	finished bool
}

func newSendBatch(n int) *sendBatch {
	return &sendBatch{out: make([]sendOutcome, n), left: n, done: make(chan struct{})}
}

func (b *sendBatch) finish(i int, o outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.out[i].finished {
		return
	}
	b.out[i] = sendOutcome{o, true}
	b.left--
	if b.left == 0 {
		close(b.done)
	}
}

// snapshot returns a copy of the outcomes so far, with err as the outcome
// of the messages not finished.
func (b *sendBatch) snapshot(err error) []sendOutcome {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := append([]sendOutcome(nil), b.out...)
	for i := range out {
		if !out[i].finished {
			out[i] = sendOutcome{outcome{err: err}, true}
		}
	}
	return out
}

func (pc *pubChannel) acquire(ctx context.Context) error {
	select {
	case pc.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func (pc *pubChannel) release() { <-pc.lock }

// detach takes the slot's AMQP channel out of it, for the caller to close.
func (pc *pubChannel) detach() *amqp.Channel {
	pc.lock <- struct{}{}
	defer pc.release()
	if pc.cs == nil {
		return nil
	}
	ch := pc.cs.ch
	pc.cs = nil
	return ch
}

// publish sends msgs in order on this slot and waits for their confirms,
// returning one outcome per message. wctx bounds the waits before sending,
// ctx the wait for confirms.
func (pc *pubChannel) publish(ctx, wctx context.Context, msgs []*outMsg) []sendOutcome {
	b := newSendBatch(len(msgs))
	for i, om := range msgs {
		err := pc.send(wctx, b, i, om)
		if err == nil {
			continue
		}
		if errors.Is(err, ErrConnectionLost) {
			b.finish(i, outcome{err: err, lost: true})
			continue
		}
		if cause := context.Cause(wctx); cause != nil && wctx.Err() != nil {
			err = cause
		}
		for j := i; j < len(msgs); j++ {
			b.finish(j, outcome{err: fmt.Errorf("rabbitmq: publish: not sent: %w", err), unsent: true})
		}
		break
	}
	select {
	case <-b.done:
		return b.out // every outcome finished: no more writes
	case <-ctx.Done():
	}
	return b.snapshot(fmt.Errorf("rabbitmq: publish: not confirmed: %w", ctx.Err()))
}

// send publishes one message. It returns an error matching
// ErrConnectionLost when the channel failed under it (the message is
// resent), or the reason it could not be sent at all.
func (pc *pubChannel) send(wctx context.Context, b *sendBatch, i int, om *outMsg) error {
	select {
	case pc.sem <- struct{}{}:
	case <-wctx.Done():
		return context.Cause(wctx)
	}
	sentOK := false
	defer func() {
		if !sentOK {
			<-pc.sem
		}
	}()
	if err := pc.acquire(wctx); err != nil {
		return err
	}
	defer pc.release()
	cs, err := pc.ensure(wctx)
	if err != nil {
		return err
	}
	if err := pc.p.conn.waitUnblocked(wctx); err != nil {
		return err
	}
	seq := cs.ch.GetNextPublishSeqNo()
	id := ident{om.exchange, om.key, om.pub.MessageId}
	pub := om.pub
	cs.mu.Lock()
	if cs.dead {
		cs.mu.Unlock()
		return ErrConnectionLost
	}
	if _, dup := cs.unmarked[id]; dup {
		// Another unconfirmed message looks the same to a basic.return:
		// mark this one so a return can name it.
		h := make(amqp.Table, len(pub.Headers)+1)
		for k, v := range pub.Headers {
			h[k] = v
		}
		h[headerSeq] = strconv.FormatUint(seq, 10)
		pub.Headers = h
	} else {
		cs.unmarked[id] = seq
	}
	cs.pending[seq] = pendingMsg{b: b, i: i, id: id}
	cs.mu.Unlock()

	if err := cs.ch.Publish(om.exchange, om.key, true, false, pub); err != nil {
		cs.mu.Lock()
		_, owned := cs.pending[seq]
		delete(cs.pending, seq)
		if cs.unmarked[id] == seq {
			delete(cs.unmarked, id)
		}
		cs.mu.Unlock()
		if !owned {
			// The listener already failed it as lost and released its
			// token.
			sentOK = true
			return nil
		}
		return fmt.Errorf("%w: %v", ErrConnectionLost, err)
	}
	sentOK = true
	return nil
}

// ensure returns the live channel of this slot, opening one (and waiting
// for the connection) when needed. Callers hold pc.lock. Opening returns
// when ctx ends, even while the broker does not answer (see await); a live
// channel is returned at once, at no cost.
func (pc *pubChannel) ensure(ctx context.Context) (*chanState, error) {
	if pc.cs != nil && !pc.cs.ch.IsClosed() {
		return pc.cs, nil
	}
	for {
		ch, err := pc.p.conn.channel(ctx)
		if err != nil {
			return nil, err
		}
		if err := chanCall(ctx, ch, func() error { return ch.Confirm(false) }); err != nil {
			if isAbandoned(err) {
				return nil, fmt.Errorf("rabbitmq: confirm mode: %w", err)
			}
			release(ctx, ch)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		cs := &chanState{ch: ch, pending: map[uint64]pendingMsg{}, unmarked: map[ident]uint64{}}
		confirms := ch.NotifyPublish(make(chan amqp.Confirmation, pc.p.cfg.Window+16))
		returns := ch.NotifyReturn(make(chan amqp.Return))
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		go pc.listen(cs, confirms, returns, closes)
		pc.cs = cs
		return cs, nil
	}
}

// listen applies the confirms and returns of one channel, in the order the
// broker sent them (a basic.return precedes the confirm of its message:
// returns are received unbuffered), and fails what is left when the
// channel dies.
func (pc *pubChannel) listen(cs *chanState, confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closes <-chan *amqp.Error) {
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			pc.onReturn(cs, r)
		case c, ok := <-confirms:
			if !ok {
				var why *amqp.Error
				select {
				case why = <-closes:
				default:
				}
				pc.failAll(cs, why)
				return
			}
			pc.onConfirm(cs, c)
		}
	}
}

func (pc *pubChannel) onReturn(cs *chanState, r amqp.Return) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var seq uint64
	if s, ok := r.Headers[headerSeq].(string); ok {
		seq, _ = strconv.ParseUint(s, 10, 64)
	} else {
		seq = cs.unmarked[ident{r.Exchange, r.RoutingKey, r.MessageId}]
	}
	if pm, ok := cs.pending[seq]; ok {
		ret := r
		ret.Body = nil
		pm.returned = &ret
		cs.pending[seq] = pm
	}
}

func (pc *pubChannel) onConfirm(cs *chanState, c amqp.Confirmation) {
	cs.mu.Lock()
	pm, ok := cs.pending[c.DeliveryTag]
	delete(cs.pending, c.DeliveryTag)
	if ok && cs.unmarked[pm.id] == c.DeliveryTag {
		delete(cs.unmarked, pm.id)
	}
	cs.mu.Unlock()
	if !ok {
		return
	}
	<-pc.sem
	var o outcome
	switch {
	case !c.Ack:
		o.err = fmt.Errorf("%w: exchange %q routing key %q", ErrNacked, pm.id.exchange, pm.id.key)
	case pm.returned != nil:
		o.err = fmt.Errorf("%w: exchange %q routing key %q: %d %s", ErrUnroutable,
			pm.id.exchange, pm.id.key, pm.returned.ReplyCode, pm.returned.ReplyText)
	}
	pm.b.finish(pm.i, o)
}

func (pc *pubChannel) failAll(cs *chanState, why *amqp.Error) {
	cs.mu.Lock()
	cs.dead = true
	pending := cs.pending
	cs.pending = nil
	cs.unmarked = nil
	cs.mu.Unlock()
	err := ErrConnectionLost
	if why != nil {
		err = fmt.Errorf("%w: %v", ErrConnectionLost, why)
	}
	if len(pending) > 0 {
		pc.p.log.Debug("rabbitmq: publisher channel closed with unconfirmed messages", "count", len(pending), "reason", why)
	}
	for _, pm := range pending {
		<-pc.sem
		pm.b.finish(pm.i, outcome{err: err, lost: true, why: why})
	}
}
