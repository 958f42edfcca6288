package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// The adapter's instrumentation scope (below telemetry.Module) and its
// messaging.system attribute.
const (
	scope  = "broker/kafka"
	system = "kafka"
)

// Sentinel errors of the adapter, in addition to the broker package's.
// Errors returned by this package wrap them, so callers test with errors.Is.
var (
	// ErrInvalidConfig: a Config field is missing or out of range.
	ErrInvalidConfig = errors.New("kafka: invalid config")
	// ErrUnknownTopic: the topic does not exist and the client does not ask
	// the cluster to create it (Config.AllowAutoTopicCreation is false).
	ErrUnknownTopic = errors.New("kafka: unknown topic")
	// ErrTopicExists: CreateTopic found the topic already there.
	ErrTopicExists = errors.New("kafka: topic already exists")
	// ErrUnreachable: no seed broker answered within Config.StartTimeout.
	// It wraps broker.ErrUnavailable.
	ErrUnreachable = fmt.Errorf("kafka: brokers unreachable: %w", broker.ErrUnavailable)
	// ErrFenced ends a Pipeline's Run when a newer producer with the same
	// transactional ID started (usually the instance's own restart): the
	// newer one owns the ID, and the transaction the fenced Run had open is
	// aborted.
	ErrFenced = errors.New("kafka: fenced by a newer producer with the same transactional ID")
)

// Compression names a record batch compression codec.
type Compression string

// Compression codecs. The producer compresses each batch; consumers
// decompress transparently.
const (
	CompressionNone   Compression = "none"
	CompressionSnappy Compression = "snappy"
	CompressionLZ4    Compression = "lz4"
	CompressionZstd   Compression = "zstd"
	CompressionGzip   Compression = "gzip"
)

func (c Compression) codec() (kgo.CompressionCodec, error) {
	switch c {
	case CompressionNone:
		return kgo.NoCompression(), nil
	case CompressionSnappy:
		return kgo.SnappyCompression(), nil
	case CompressionLZ4:
		return kgo.Lz4Compression(), nil
	case CompressionZstd:
		return kgo.ZstdCompression(), nil
	case CompressionGzip:
		return kgo.GzipCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("%w: unknown compression %q", ErrInvalidConfig, string(c))
}

// Defaults for the fields of Config, PublisherConfig, SubscriberConfig and
// PipelineConfig left zero.
const (
	DefaultClientID     = "steadfast"
	DefaultDialTimeout  = 10 * time.Second
	DefaultStartTimeout = 15 * time.Second

	DefaultLinger                      = 0
	DefaultBatchMaxBytes               = 1 << 20
	DefaultCompression                 = CompressionSnappy
	DefaultDeliveryTimeout             = 30 * time.Second
	DefaultPublisherMaxBufferedRecords = 100_000

	DefaultCommitInterval               = time.Second
	DefaultDrainTimeout                 = 30 * time.Second
	DefaultSubscriberMaxBufferedRecords = 10_000
	DefaultSessionTimeout               = 45 * time.Second
	DefaultRebalanceTimeout             = 60 * time.Second
	DefaultHeartbeatInterval            = 3 * time.Second

	DefaultMaxBatch           = 500
	DefaultTransactionTimeout = 30 * time.Second
)

// Config is what every client of the package (Publisher, Subscriber, Admin,
// Pipeline) needs to reach the cluster. Zero fields take their documented
// defaults; a negative value turns a setting off where its field says so,
// and is rejected elsewhere.
type Config struct {
	// Brokers are the seed brokers as host:port. Required. ParseBrokers turns
	// a comma-separated list into this form.
	Brokers []string
	// ClientID is sent to the brokers with every request. Default
	// DefaultClientID ("steadfast").
	ClientID string
	// Logger receives the adapter's logs and franz-go's warnings and errors.
	// Default slog.Default(); pass a logger with a discarding handler to
	// silence it.
	Logger *slog.Logger
	// MeterProvider provides the meter for the consumer-lag gauge. Default:
	// the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
	// TracerProvider receives a "publish <topic>" producer span per Publish
	// call and a "process <topic>" consumer span per handler (or Transform)
	// call, parented by the record's traceparent header, which Publish sets
	// from its ctx. Default: the OpenTelemetry global provider, which
	// records nothing until the application installs an SDK.
	TracerProvider trace.TracerProvider
	// DialTimeout bounds each connection attempt. Default
	// DefaultDialTimeout (10s).
	DialTimeout time.Duration
	// StartTimeout bounds how long Subscribe, Pipeline.Run and the Admin
	// helpers wait for the cluster to answer the first metadata request;
	// after it they fail with ErrUnreachable. Default DefaultStartTimeout
	// (15s).
	StartTimeout time.Duration
	// AllowAutoTopicCreation asks the cluster to create topics that do not
	// exist when they are first produced to or consumed (the cluster's
	// auto.create.topics.enable must also be on). Default false: using an
	// unknown topic fails with ErrUnknownTopic.
	AllowAutoTopicCreation bool
	// Options are extra franz-go client options (TLS, SASL, ...), applied
	// after the adapter's own. Options that change acks, idempotence,
	// auto-commit, the balancer or the rebalance callbacks void the
	// guarantees documented in this package. So does a kgo.WithPools pool
	// of decompressed bytes (kgo.PoolDecompressBytes): the Subscriber
	// recycles each record once its handler returned, franz-go then zeroes
	// and reuses the batch's buffer, and any Payload a handler kept would
	// change under it.
	Options []kgo.Opt
}

// ClientOpts returns the franz-go options every client of this package
// starts from: the seed brokers, ClientID, DialTimeout, Logger (which gets
// franz-go's warnings and errors), AllowAutoTopicCreation, then Options.
// Tools that build a client of their own, such as kafkadlq's Inspector, use
// it to reach the cluster exactly as the adapter does. It fails with
// ErrInvalidConfig where NewPublisher would.
func (c Config) ClientOpts() ([]kgo.Opt, error) {
	c, err := c.withDefaults()
	if err != nil {
		return nil, err
	}
	return append(c.baseOpts(), c.Options...), nil
}

// ParseBrokers splits a comma-separated broker list such as the value of
// STEADFAST_KAFKA_BROKERS, trimming spaces and dropping empty entries.
func ParseBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

func (c Config) withDefaults() (Config, error) {
	if len(c.Brokers) == 0 {
		return c, fmt.Errorf("%w: no seed brokers", ErrInvalidConfig)
	}
	for _, b := range c.Brokers {
		if strings.TrimSpace(b) == "" {
			return c, fmt.Errorf("%w: empty seed broker address", ErrInvalidConfig)
		}
	}
	if c.DialTimeout < 0 || c.StartTimeout < 0 {
		return c, fmt.Errorf("%w: negative timeout", ErrInvalidConfig)
	}
	c.ClientID = cmp.Or(c.ClientID, DefaultClientID)
	c.Logger = telemetry.Logger(c.Logger)
	c.DialTimeout = cmp.Or(c.DialTimeout, DefaultDialTimeout)
	c.StartTimeout = cmp.Or(c.StartTimeout, DefaultStartTimeout)
	return c, nil
}

// baseOpts are the client options shared by every client of the package.
func (c Config) baseOpts() []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.ClientID),
		kgo.DialTimeout(c.DialTimeout),
		kgo.WithLogger(kgoLogger{c.Logger}),
	}
	if c.AllowAutoTopicCreation {
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	return opts
}

// producerOpts are the options every producing client of the adapter
// shares: acks=all, and the partitioner that puts a keyed record on
// KeyPartition's partition (murmur2, like the Java client) and spreads
// keyless ones with sticky batches.
func producerOpts() []kgo.Opt {
	return []kgo.Opt{
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64<<10, true, true, nil)),
	}
}

// groupOpts are the options every consumer-group member of the adapter
// shares: the group and topic, the cooperative-sticky balancer, a new
// group starting at the earliest offset, the isolation level and the group
// timings (filled by fillGroupTimings).
func groupOpts(group, topic string, iso kgo.IsolationLevel, session, rebalance, heartbeat time.Duration) []kgo.Opt {
	return []kgo.Opt{
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.ConsumeStartOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(iso),
		kgo.SessionTimeout(session),
		kgo.RebalanceTimeout(rebalance),
		kgo.HeartbeatInterval(heartbeat),
	}
}

// kgoLogger forwards franz-go's warnings and errors to slog.
type kgoLogger struct{ l *slog.Logger }

func (k kgoLogger) Level() kgo.LogLevel {
	if k.l.Enabled(context.Background(), slog.LevelWarn) {
		return kgo.LogLevelWarn
	}
	return kgo.LogLevelNone
}

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	if level == kgo.LogLevelError {
		lv = slog.LevelError
	}
	k.l.Log(context.Background(), lv, "franz-go: "+msg, keyvals...)
}

// PublisherConfig tunes a Publisher. Zero fields take their documented
// defaults; a negative value turns a setting off where its field says so,
// and is rejected elsewhere.
type PublisherConfig struct {
	Config
	// Linger is how long a partition's batch may wait for more records
	// before it is sent. Publish sends the partitions its own records went to
	// as soon as all of them are buffered; what gathers the records of
	// concurrent calls into shared produce requests is that a broker has one
	// request in flight at a time (the idempotent producer's rule): records
	// buffered meanwhile leave together in the next one. A linger adds a
	// wait on top, and records buffered while a request is in flight may sit
	// out the whole linger after it returns: measured with 16 goroutines
	// each publishing one message per call, a 5ms linger cut throughput to
	// a fifth, and it gains nothing for calls of many messages. Default
	// DefaultLinger (0, no linger); negative is the same as zero.
	Linger time.Duration
	// BatchMaxBytes bounds one record batch. Default DefaultBatchMaxBytes
	// (1 MiB, 1,048,576), which fits Kafka's default message.max.bytes.
	BatchMaxBytes int32
	// Compression is the batch codec. Default DefaultCompression
	// (CompressionSnappy).
	Compression Compression
	// MaxMessageBytes is the largest Message.Size that Publish accepts;
	// larger messages are rejected with broker.ErrMessageTooLarge before
	// anything is sent. Default broker.DefaultMaxMessageBytes, which leaves
	// room for the record framing and the adapter's headers below a
	// broker's default message.max.bytes. It must leave room
	// below BatchMaxBytes for the record framing (1 KiB is enough).
	MaxMessageBytes int
	// DeliveryTimeout bounds how long a record may wait for the cluster,
	// retries included, before it fails (Kafka's delivery.timeout.ms).
	// Publish also honours its context. Default DefaultDeliveryTimeout
	// (30s).
	DeliveryTimeout time.Duration
	// MaxBufferedRecords bounds the records waiting to be sent across all
	// Publish calls; a full buffer makes Publish wait. Default
	// DefaultPublisherMaxBufferedRecords (100,000).
	MaxBufferedRecords int
}

func (c PublisherConfig) withDefaults() (PublisherConfig, error) {
	var err error
	if c.Config, err = c.Config.withDefaults(); err != nil {
		return c, err
	}
	c.Linger = max(c.Linger, DefaultLinger)
	c.BatchMaxBytes = cmp.Or(c.BatchMaxBytes, DefaultBatchMaxBytes)
	c.Compression = cmp.Or(c.Compression, DefaultCompression)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, broker.DefaultMaxMessageBytes)
	c.DeliveryTimeout = cmp.Or(c.DeliveryTimeout, DefaultDeliveryTimeout)
	c.MaxBufferedRecords = cmp.Or(c.MaxBufferedRecords, DefaultPublisherMaxBufferedRecords)
	switch {
	case c.BatchMaxBytes < 1024:
		return c, fmt.Errorf("%w: BatchMaxBytes %d < 1024", ErrInvalidConfig, c.BatchMaxBytes)
	case c.MaxMessageBytes < 0 || c.MaxMessageBytes > int(c.BatchMaxBytes)-512:
		return c, fmt.Errorf("%w: MaxMessageBytes %d must be in [1, BatchMaxBytes-512]", ErrInvalidConfig, c.MaxMessageBytes)
	case c.DeliveryTimeout < 0:
		return c, fmt.Errorf("%w: negative DeliveryTimeout", ErrInvalidConfig)
	case c.MaxBufferedRecords < 0:
		return c, fmt.Errorf("%w: negative MaxBufferedRecords", ErrInvalidConfig)
	}
	if _, err := c.Compression.codec(); err != nil {
		return c, err
	}
	return c, nil
}

// Ordering says which messages of one partition a subscriber may handle at
// the same time.
type Ordering int

const (
	// OrderPerKey handles messages with different keys of one partition in
	// parallel and messages with the same key one at a time, in offset
	// order. Messages without a key have no ordering constraint. This is the
	// default: the broker package promises order per key only, and a slow
	// or failing message blocks its key, not its whole partition.
	OrderPerKey Ordering = iota
	// OrderPerPartition handles one message of a partition at a time, in
	// offset order, as a classic Kafka consumer does. Choose it when
	// consumers rely on order across keys within a partition.
	OrderPerPartition
)

// DefaultRetryBackoff returns the schedule SubscriberConfig.RetryBackoff
// and PipelineConfig.RetryBackoff use when zero: 10ms after the first
// failure, doubling, at most 5s, without jitter.
func DefaultRetryBackoff() broker.Backoff {
	return broker.Backoff{Initial: 10 * time.Millisecond, Max: 5 * time.Second, Jitter: -1}
}

// SubscriberConfig tunes a Subscriber. Zero fields take their documented
// defaults; a negative value turns a setting off where its field says so,
// and is rejected elsewhere.
type SubscriberConfig struct {
	Config
	// Ordering is OrderPerKey (default) or OrderPerPartition.
	Ordering Ordering
	// RetryBackoff is how long a message whose handler failed waits before
	// its next attempt, by the number of attempts so far. The message's key
	// (its partition, with OrderPerPartition) stays blocked meanwhile, so
	// order holds; other keys keep flowing. A message is retried until it
	// succeeds or its partition is released; bound the attempts with retry
	// or dead-letter middleware. Zero means DefaultRetryBackoff(); otherwise
	// zero fields take broker.Backoff's defaults.
	RetryBackoff broker.Backoff
	// ReadCommitted makes subscribers skip records of aborted transactions
	// and wait for open ones to end (isolation.level=read_committed).
	// Default false: read_uncommitted, as Kafka consumers default to.
	ReadCommitted bool
	// CommitInterval is how often completed offsets are committed while
	// consuming. Offsets are also committed synchronously when partitions
	// are released and at shutdown. Default DefaultCommitInterval (1s).
	CommitInterval time.Duration
	// DrainTimeout bounds how long a released partition or a stopping
	// subscription waits for running handlers before cancelling their
	// context; their results are still recorded when they return. Default
	// DefaultDrainTimeout (30s). Keep it below RebalanceTimeout.
	DrainTimeout time.Duration
	// MaxBufferedRecords bounds the records a member has taken from
	// franz-go and not yet finished handling: the member takes fetched
	// records only while fewer are unfinished, and never more than the
	// bound. franz-go buffers up to FetchMaxBytes (50 MiB by default) of
	// fetched records beyond these. Default
	// DefaultSubscriberMaxBufferedRecords (10,000).
	MaxBufferedRecords int
	// SessionTimeout is Kafka's session.timeout.ms. Default
	// DefaultSessionTimeout (45s).
	SessionTimeout time.Duration
	// RebalanceTimeout is Kafka's rebalance.timeout.ms: how long a member
	// may take to drain and commit released partitions. Default
	// DefaultRebalanceTimeout (60s).
	RebalanceTimeout time.Duration
	// HeartbeatInterval is Kafka's heartbeat.interval.ms. Default
	// DefaultHeartbeatInterval (3s).
	HeartbeatInterval time.Duration
}

func (c SubscriberConfig) withDefaults() (SubscriberConfig, error) {
	var err error
	if c.Config, err = c.Config.withDefaults(); err != nil {
		return c, err
	}
	if c.Ordering != OrderPerKey && c.Ordering != OrderPerPartition {
		return c, fmt.Errorf("%w: unknown ordering %d", ErrInvalidConfig, c.Ordering)
	}
	if err := c.RetryBackoff.Validate(); err != nil {
		return c, fmt.Errorf("%w: RetryBackoff: %w", ErrInvalidConfig, err)
	}
	c.RetryBackoff = cmp.Or(c.RetryBackoff, DefaultRetryBackoff())
	c.CommitInterval = cmp.Or(c.CommitInterval, DefaultCommitInterval)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, DefaultDrainTimeout)
	c.MaxBufferedRecords = cmp.Or(c.MaxBufferedRecords, DefaultSubscriberMaxBufferedRecords)
	if !fillGroupTimings(&c.SessionTimeout, &c.RebalanceTimeout, &c.HeartbeatInterval) ||
		c.CommitInterval < 0 || c.DrainTimeout < 0 || c.MaxBufferedRecords < 0 {
		return c, fmt.Errorf("%w: negative subscriber setting", ErrInvalidConfig)
	}
	return c, nil
}

// fillGroupTimings gives zero consumer-group timings Kafka's defaults
// (DefaultSessionTimeout, DefaultRebalanceTimeout,
// DefaultHeartbeatInterval) and reports whether all three
// are then valid (not negative). Subscriber and Pipeline members share them.
func fillGroupTimings(session, rebalance, heartbeat *time.Duration) bool {
	for _, t := range []struct {
		d   *time.Duration
		def time.Duration
	}{{session, DefaultSessionTimeout}, {rebalance, DefaultRebalanceTimeout}, {heartbeat, DefaultHeartbeatInterval}} {
		if *t.d == 0 {
			*t.d = t.def
		}
		if *t.d < 0 {
			return false
		}
	}
	return true
}
