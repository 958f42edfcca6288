package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Publisher publishes messages with an idempotent producer and acks=all.
// It implements broker.Publisher and is safe for concurrent use; share one
// per process. Create it with NewPublisher and Close it when done.
//
// Guarantees: Publish returns nil only after every record was acknowledged
// by all in-sync replicas. The idempotent producer keeps the records of one
// partition in order and never writes one twice because of its own retries,
// so messages of one call that share a key land in argument order, exactly
// once per successful call. A record whose key is non-empty goes to
// KeyPartition(key, partitions), the partition Kafka's Java client chooses;
// keyless records are spread by the uniform sticky partitioner.
//
// Costs: each message carries its ID in a record header (32 bytes for a
// UUID); batches are compressed with Snappy unless configured otherwise.
type Publisher struct {
	cfg    PublisherConfig
	cl     *kgo.Client
	ids    *idGen
	spans  telemetry.Spans
	closed atomic.Bool

	// timeoutCause is the error a Publish call's context ends with when
	// DeliveryTimeout passes.
	timeoutCause error
}

var (
	_ broker.Publisher   = (*Publisher)(nil)
	_ broker.SizeLimiter = (*Publisher)(nil)
)

// NewPublisher validates cfg and creates the producer. It does not contact
// the cluster; the first Publish does.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	codec, _ := cfg.Compression.codec()
	opts := append(cfg.baseOpts(), producerOpts()...)
	opts = append(opts,
		kgo.ProducerLinger(cfg.Linger),
		kgo.ProducerBatchMaxBytes(cfg.BatchMaxBytes),
		kgo.ProducerBatchCompression(codec),
		kgo.MaxBufferedRecords(cfg.MaxBufferedRecords),
	)
	opts = append(opts, cfg.Options...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return &Publisher{cfg: cfg, cl: cl, ids: newIDGen(), spans: telemetry.NewSpans(cfg.TracerProvider, scope, system),
		timeoutCause: fmt.Errorf("%w: %w (DeliveryTimeout %v)", broker.ErrUnavailable, kgo.ErrRecordTimeout, cfg.DeliveryTimeout)}, nil
}

// MaxMessageBytes returns the largest Message.Size Publish accepts
// (PublisherConfig.MaxMessageBytes). It implements broker.SizeLimiter.
func (p *Publisher) MaxMessageBytes() int { return p.cfg.MaxMessageBytes }

// Client returns the underlying franz-go client, for metrics and admin
// requests. Producing through it bypasses the adapter's mapping.
func (p *Publisher) Client() *kgo.Client { return p.cl }

// Publish sends msgs and waits until the cluster acknowledged every one.
//
// The batch is validated first (broker.Message.Validate with MaxMessageBytes): an
// empty topic or an oversized message rejects the whole call with an error
// wrapping broker.ErrEmptyTopic or broker.ErrMessageTooLarge, and nothing is
// sent. Otherwise every message is produced at once and the call waits for
// all acknowledgements; when some fail, the error is a *broker.PublishError
// naming them (unknown topics wrap ErrUnknownTopic, records the broker finds
// too large wrap broker.ErrMessageTooLarge, records that outlive
// DeliveryTimeout or exhaust their retries wrap broker.ErrUnavailable and
// kgo.ErrRecordTimeout or kgo.ErrRecordRetries). When ctx ends (or
// DeliveryTimeout passes) before every acknowledgement is in, Publish returns
// at once with a *broker.PublishError wrapping the context's error (or
// broker.ErrUnavailable and kgo.ErrRecordTimeout) for every message of the
// call; some of them may
// still reach the cluster, so treat them as not sent and retry them
// (consumers deduplicate on Message.ID).
//
// Records of one Publish call are sent without waiting for a linger, and
// concurrent calls share produce requests: a call of one message costs a
// share of a request, not a request of its own.
func (p *Publisher) Publish(ctx context.Context, msgs ...broker.Message) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("kafka: publish: %w", err)
	}
	if p.closed.Load() {
		return fmt.Errorf("kafka: publish: %w", broker.ErrClosed)
	}
	if err := brokerimpl.ValidateBatch(msgs, p.cfg.MaxMessageBytes); err != nil {
		return fmt.Errorf("kafka: publish: %w", err)
	}
	if len(msgs) == 0 {
		return nil
	}
	ctx, span := p.spans.PublishSpan(ctx, msgs)
	defer func() { telemetry.End(span, err) }()
	recs := toRecords(msgs, p.ids, traceHeaders(ctx))
	// The delivery timeout is a deadline on the call rather than franz-go's
	// record timeout, which counts from the record timestamp (Message.Time).
	ctx, cancel := context.WithTimeoutCause(ctx, p.cfg.DeliveryTimeout, p.timeoutCause)
	defer cancel()
	results := p.produce(ctx, recs)
	var res kgo.ProduceResults
	select {
	case res = <-results:
	case <-ctx.Done():
		select {
		case res = <-results:
		default:
			cause := context.Cause(ctx)
			pe := &broker.PublishError{Failures: make([]broker.PublishFailure, len(recs))}
			for i, r := range recs {
				pe.Failures[i] = broker.PublishFailure{Index: i, ID: recordID(r), Err: fmt.Errorf("kafka: not acknowledged: %w", cause)}
			}
			return pe
		}
	}
	errs := make([]error, len(recs))
	var index map[*kgo.Record]int
	failed := false
	for _, r := range res {
		if r.Err == nil {
			continue
		}
		if index == nil {
			index = make(map[*kgo.Record]int, len(recs))
			for i, rec := range recs {
				index[rec] = i
			}
		}
		errs[index[r.Record]], failed = r.Err, true
	}
	if !failed {
		return nil
	}
	p.retryTooLarge(ctx, recs, errs)
	var pe *broker.PublishError
	for i, rerr := range errs {
		if rerr == nil {
			continue
		}
		if pe == nil {
			pe = &broker.PublishError{}
		}
		err := rerr
		var nr notRetried
		if !errors.As(rerr, &nr) {
			err = classifyProduceErr(msgs[i].Topic, rerr)
		}
		if ctx.Err() != nil && errors.Is(rerr, ctx.Err()) {
			err = fmt.Errorf("kafka: not acknowledged: %w", context.Cause(ctx))
		}
		pe.Failures = append(pe.Failures, broker.PublishFailure{Index: i, ID: recordID(recs[i]), Err: err})
	}
	if pe == nil {
		return nil
	}
	return pe
}

// produce hands recs to the client and returns the channel that receives
// their results once the cluster answered for every one. It does not wait,
// so the call can give up when ctx ends.
//
// Without a linger each record is handed over with Produce and a promise:
// the client sends a partition's records as soon as it has no request in
// flight to that broker, and the records of concurrent calls buffered
// meanwhile leave together in the next request. With a linger, ProduceSync
// (run aside, as it waits) sends the partitions it touched without waiting
// for the linger, while concurrent calls still share batches.
func (p *Publisher) produce(ctx context.Context, recs []*kgo.Record) <-chan kgo.ProduceResults {
	done := make(chan kgo.ProduceResults, 1)
	if p.cfg.Linger > 0 {
		go func() { done <- p.cl.ProduceSync(ctx, recs...) }()
		return done
	}
	var mu sync.Mutex
	results := make(kgo.ProduceResults, 0, len(recs))
	promise := func(r *kgo.Record, err error) {
		mu.Lock()
		results = append(results, kgo.ProduceResult{Record: r, Err: err})
		last := len(results) == len(recs)
		mu.Unlock()
		if last {
			done <- results
		}
	}
	for _, r := range recs {
		p.cl.Produce(ctx, r, promise)
	}
	return done
}

// tooLarge reports the errors with which the cluster refuses a record batch
// that exceeds a topic's max.message.bytes.
func tooLarge(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge)
}

// notRetried is the error of a record that was refused as part of an
// oversized batch and not sent again because an earlier record of its key
// was refused on its own: sending it would overtake that record.
type notRetried struct{ key string }

func (e notRetried) Error() string {
	return fmt.Sprintf("kafka: not sent: an earlier message of key %q in this call was refused", e.key)
}

// retryTooLarge sends again, one at a time and in call order, the records
// refused as too large: the cluster refuses a whole record batch when the
// batch exceeds max.message.bytes, so a small record that shared a batch
// with an oversized one is refused with it. Alone, each record is accepted
// or refused on its own size, and only the records that are too large by
// themselves keep their error. A record whose key already failed in this
// pass is not sent (it would overtake the failed one) and gets a notRetried
// error; so does every record once ctx ends.
func (p *Publisher) retryTooLarge(ctx context.Context, recs []*kgo.Record, errs []error) {
	failedKey := map[string]bool{}
	for i, err := range errs {
		if err == nil || !tooLarge(err) {
			continue
		}
		key := string(recs[i].Key)
		if failedKey[key] && len(recs[i].Key) > 0 {
			errs[i] = notRetried{key: key}
			continue
		}
		if ctx.Err() != nil {
			continue
		}
		r := recs[i]
		r.Partition, r.Offset, r.ProducerID, r.ProducerEpoch, r.LeaderEpoch = 0, 0, 0, 0, 0
		errs[i] = p.cl.ProduceSync(ctx, r).FirstErr()
		if errs[i] != nil && len(r.Key) > 0 {
			failedKey[key] = true
		}
	}
}

// classifyProduceErr wraps franz-go and Kafka errors with the sentinel a
// caller tests for.
func classifyProduceErr(topic string, err error) error {
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("%w %q: %w", ErrUnknownTopic, topic, err)
	case tooLarge(err):
		return fmt.Errorf("%w: %w", broker.ErrMessageTooLarge, err)
	case errors.Is(err, kgo.ErrClientClosed):
		return fmt.Errorf("%w: %w", broker.ErrClosed, err)
	case errors.Is(err, kgo.ErrRecordTimeout), errors.Is(err, kgo.ErrRecordRetries):
		return fmt.Errorf("kafka: produce to %q: %w: %w", topic, broker.ErrUnavailable, err)
	}
	return fmt.Errorf("kafka: produce to %q: %w", topic, err)
}

// Close waits up to 10s for records still buffered by abandoned Publish
// calls, then closes the connections. Publish returns broker.ErrClosed
// afterwards. Close is idempotent.
func (p *Publisher) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.cl.Flush(ctx)
	p.cl.Close()
	if err != nil {
		return fmt.Errorf("kafka: close publisher: %w", err)
	}
	return nil
}
