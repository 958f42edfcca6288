package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/fault"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Transform turns one consumed message into the messages to produce for it.
// It runs inside a Kafka transaction: what it returns is produced in the same
// transaction that commits its input offset. Returning an error aborts the
// transaction; the batch is consumed again and the failing message comes
// back with a larger Delivery.Attempt after PipelineConfig.RetryBackoff.
// To give up on a message that keeps failing, return a message for a
// dead-letter topic instead of an error once d.Attempt is high enough: it
// commits atomically with the input offset like any other output.
type Transform func(ctx context.Context, d broker.Delivery) ([]broker.Message, error)

// PipelineConfig tunes a Pipeline. Zero fields take their documented
// defaults; a negative value turns a setting off where its field says so,
// and is rejected elsewhere.
type PipelineConfig struct {
	Config
	// TransactionalID identifies the pipeline's transactional producer. Give
	// every running instance its own ID and keep it across restarts: a
	// restarted instance then aborts the transaction its previous
	// incarnation left open at once, instead of after TransactionTimeout,
	// and fences that incarnation if it still runs (its next transaction
	// fails and its Run ends with ErrFenced).
	//
	// One Run call of a Pipeline at a time uses the ID as given. Run calls
	// that overlap with it use the ID suffixed with "-2", "-3", ...: each
	// call takes the lowest number no running call holds, so a Run started
	// after another returned reuses its ID, and an instance that always
	// starts the same number of Run calls uses the same IDs after a
	// restart. Default: a random ID per Run call.
	TransactionalID string
	// MaxBatch bounds the input messages handled in one transaction.
	// Default DefaultMaxBatch (500).
	MaxBatch int
	// TransactionTimeout is how long the cluster keeps a transaction open
	// without hearing from its producer before aborting it. Default
	// DefaultTransactionTimeout (30s).
	TransactionTimeout time.Duration
	// RetryBackoff is how long to wait after a failed attempt, by its
	// number, before consuming the aborted batch again. Zero means
	// DefaultRetryBackoff(); otherwise zero fields take broker.Backoff's
	// defaults.
	RetryBackoff broker.Backoff
	// MaxMessageBytes is the largest output Message.Size accepted. Default
	// broker.DefaultMaxMessageBytes.
	MaxMessageBytes int
	// SessionTimeout, RebalanceTimeout and HeartbeatInterval are the
	// consumer group timings, with the defaults of SubscriberConfig.
	SessionTimeout, RebalanceTimeout, HeartbeatInterval time.Duration
}

func (c PipelineConfig) withDefaults() (PipelineConfig, error) {
	var err error
	if c.Config, err = c.Config.withDefaults(); err != nil {
		return c, err
	}
	c.MaxBatch = cmp.Or(c.MaxBatch, DefaultMaxBatch)
	c.TransactionTimeout = cmp.Or(c.TransactionTimeout, DefaultTransactionTimeout)
	if err := c.RetryBackoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: RetryBackoff: %w", ErrInvalidConfig, err)
	}
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff())
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	if !fillGroupTimings(&c.SessionTimeout, &c.RebalanceTimeout, &c.HeartbeatInterval) ||
		c.MaxBatch < 0 || c.TransactionTimeout < 0 || c.MaxMessageBytes < 0 {
		return c, fmt.Errorf("%w: negative pipeline setting", ErrInvalidConfig)
	}
	return c, nil
}

// Pipeline runs exactly-once consume-transform-produce loops on Kafka
// transactions.
//
// Guarantee: for every input message, the messages its Transform returned
// and the consumer group's offset past it commit atomically, or not at all.
// Consumers of the output that read with ReadCommitted see each input
// reflected exactly once, whatever crashes, aborts or rebalances happen
// (duplicates of the Transform's own side effects outside Kafka are still
// possible: it may run more than once per input). Input is read with
// read_committed isolation.
//
// Costs: one transaction per batch of up to MaxBatch inputs (two extra
// round trips to the transaction coordinator and a commit marker per
// partition written); output becomes visible to read_committed consumers
// only when the transaction commits. Inputs are transformed one at a time
// per member, in partition order.
type Pipeline struct {
	cfg   PipelineConfig
	ids   *idGen
	spans telemetry.Spans

	mu    sync.Mutex
	slots []bool // transactional ID suffixes held by running Run calls
}

// pointTransform is the fault point (internal/fault) before each input's
// Transform; its data is a transformPoint. A fault there ends Run at once
// with that error, without ending the open transaction, as a process crash
// would (crash tests flush the records produced so far first).
const pointTransform = "kafka/pipeline: transform"

// transformPoint is the data of pointTransform.
type transformPoint struct {
	cl    *kgo.Client // the transactional producer
	d     broker.Delivery
	inTxn int // inputs already transformed in the open transaction
}

// NewPipeline validates cfg and returns a Pipeline.
func NewPipeline(cfg PipelineConfig) (*Pipeline, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Pipeline{cfg: cfg, ids: newIDGen(), spans: telemetry.NewSpans(cfg.TracerProvider, scope, system)}, nil
}

// Run joins sub.Group on sub.Topic and applies fn to every input message in
// transactions until ctx is cancelled: the transaction in progress is then
// finished and committed, and Run returns nil. Bad arguments fail at once
// with the broker package's sentinels, an unknown input topic with
// ErrUnknownTopic, an unreachable cluster with ErrUnreachable. An error
// the transactional producer cannot recover from ends Run with that error.
// A newer producer with the same transactional ID (see
// PipelineConfig.TransactionalID) fences this one: Run then ends with
// ErrFenced at its next transaction, whose work is aborted. sub.Concurrency is ignored: one Run call transforms one message at
// a time; run several for parallelism.
func (p *Pipeline) Run(ctx context.Context, sub broker.Subscription, fn Transform) error {
	if fn == nil {
		return broker.ErrNilHandler
	}
	if err := brokerimpl.CheckSubscribe(sub, func(context.Context, broker.Delivery) error { return nil }); err != nil {
		return err
	}
	cfg := p.cfg
	if !cfg.AllowAutoTopicCreation {
		if err := p.checkTopic(ctx, sub.Topic); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kafka: pipeline %q/%q: %w", sub.Topic, sub.Group, err)
		}
	}
	var txnID string
	if cfg.TransactionalID == "" {
		txnID = "steadfast-" + sub.Group + "-" + broker.NewID()
	} else {
		slot := p.takeSlot()
		defer p.releaseSlot(slot)
		txnID = slotTxnID(cfg.TransactionalID, slot)
	}

	opts := append(cfg.baseOpts(),
		kgo.TransactionalID(txnID),
		kgo.TransactionTimeout(cfg.TransactionTimeout),
	)
	opts = append(opts, producerOpts()...)
	opts = append(opts, groupOpts(sub.Group, sub.Topic, kgo.ReadCommitted(),
		cfg.SessionTimeout, cfg.RebalanceTimeout, cfg.HeartbeatInterval)...)
	opts = append(opts, cfg.Options...)
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	r := &pipelineRun{p: p, cfg: &cfg, sub: sub, fn: fn, sess: sess,
		hctx: context.WithoutCancel(ctx), attempts: make(map[offsetKey]int)}
	err = r.loop(ctx)
	sess.Close()
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) {
		return fmt.Errorf("kafka: pipeline %q/%q as %q: %w: %w", sub.Topic, sub.Group, txnID, ErrFenced, err)
	}
	if err != nil {
		return fmt.Errorf("kafka: pipeline %q/%q: %w", sub.Topic, sub.Group, err)
	}
	return nil
}

// takeSlot reserves the lowest transactional ID suffix no running Run call
// holds.
func (p *Pipeline) takeSlot() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, held := range p.slots {
		if !held {
			p.slots[i] = true
			return i
		}
	}
	p.slots = append(p.slots, true)
	return len(p.slots) - 1
}

func (p *Pipeline) releaseSlot(slot int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slots[slot] = false
}

// slotTxnID is the transactional ID of the Run call holding slot: id itself
// for slot 0, then id-2, id-3, ...
func slotTxnID(id string, slot int) string {
	if slot == 0 {
		return id
	}
	return id + "-" + strconv.Itoa(slot+1)
}

func (p *Pipeline) checkTopic(ctx context.Context, topic string) error {
	a, err := NewAdmin(p.cfg.Config)
	if err != nil {
		return err
	}
	defer a.Close()
	_, err = a.Partitions(ctx, topic)
	return err
}

type offsetKey struct {
	partition int32
	offset    int64
}

type pipelineRun struct {
	p        *Pipeline
	cfg      *PipelineConfig
	sub      broker.Subscription
	fn       Transform
	sess     *kgo.GroupTransactSession
	hctx     context.Context
	attempts map[offsetKey]int
}

func (r *pipelineRun) loop(ctx context.Context) error {
	log := r.cfg.Logger.With("topic", r.sub.Topic, "group", r.sub.Group)
	for ctx.Err() == nil {
		fs := r.sess.PollRecords(ctx, r.cfg.MaxBatch)
		if fs.IsClientClosed() {
			return nil
		}
		fs.EachError(func(_ string, part int32, err error) {
			if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
				log.Warn("kafka: pipeline fetch error", "partition", part, "error", err)
			}
		})
		recs := fs.Records()
		if len(recs) == 0 {
			continue
		}
		if err := r.sess.Begin(); err != nil {
			return fmt.Errorf("begin transaction: %w", err)
		}
		failed, failedAttempt, err := r.transform(recs)
		if err != nil {
			return err
		}
		endCtx, cancel := context.WithTimeout(r.hctx, r.cfg.TransactionTimeout)
		committed, err := r.sess.End(endCtx, kgo.TransactionEndTry(failed == nil))
		cancel()
		if err != nil {
			return fmt.Errorf("end transaction: %w", err)
		}
		if committed {
			for _, rec := range recs {
				delete(r.attempts, offsetKey{rec.Partition, rec.Offset})
			}
			continue
		}
		if failed == nil {
			// Aborted by a rebalance: the inputs may move to another member.
			clear(r.attempts)
			continue
		}
		log.Debug("kafka: pipeline transaction aborted", "partition", failed.Partition, "offset", failed.Offset, "attempt", failedAttempt)
		select {
		case <-ctx.Done():
		case <-time.After(r.cfg.RetryBackoff.Delay(failedAttempt)):
		}
	}
	return nil
}

// transform runs fn over recs inside the open transaction, producing its
// output. It returns the record whose transform or output failed (nil when
// all succeeded) and its attempt number.
func (r *pipelineRun) transform(recs []*kgo.Record) (*kgo.Record, int, error) {
	var (
		mu      sync.Mutex
		prodErr error
	)
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			prodErr = errors.Join(prodErr, err)
			mu.Unlock()
		}
	}
	inj := fault.From(r.hctx)
	for i, rec := range recs {
		k := offsetKey{rec.Partition, rec.Offset}
		r.attempts[k]++
		d := broker.Delivery{
			Message:     fromRecord(rec, nil),
			Attempt:     r.attempts[k],
			Redelivered: r.attempts[k] > 1,
			Group:       r.sub.Group,
			Partition:   rec.Partition,
			Offset:      rec.Offset,
		}
		if inj != nil {
			if err := inj(pointTransform, transformPoint{cl: r.sess.Client(), d: d, inTxn: i}); err != nil {
				return nil, 0, err
			}
		}
		sctx, span := r.p.spans.Process(r.hctx, d)
		out, err := r.call(sctx, d)
		var outRecs []*kgo.Record
		if err == nil {
			if err = brokerimpl.ValidateBatch(out, r.cfg.MaxMessageBytes); err == nil {
				outRecs = toRecords(out, r.p.ids, traceHeaders(sctx))
			}
		}
		telemetry.End(span, err)
		if err != nil {
			r.cfg.Logger.Debug("kafka: transform failed", "partition", rec.Partition, "offset", rec.Offset, "attempt", d.Attempt, "error", err)
			return rec, d.Attempt, nil
		}
		for _, rec := range outRecs {
			r.sess.Produce(r.hctx, rec, promise)
		}
	}
	last := recs[len(recs)-1]
	ctx, cancel := context.WithTimeout(r.hctx, r.cfg.TransactionTimeout)
	defer cancel()
	if err := r.sess.Client().Flush(ctx); err != nil {
		return last, r.attempts[offsetKey{last.Partition, last.Offset}], nil
	}
	mu.Lock()
	defer mu.Unlock()
	if prodErr != nil {
		r.cfg.Logger.Warn("kafka: pipeline produce failed; aborting", "error", prodErr)
		return last, r.attempts[offsetKey{last.Partition, last.Offset}], nil
	}
	return nil, 0, nil
}

func (r *pipelineRun) call(ctx context.Context, d broker.Delivery) (out []broker.Message, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("kafka: transform panicked: %v", v)
		}
	}()
	return r.fn(ctx, d)
}
