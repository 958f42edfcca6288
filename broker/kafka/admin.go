package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
)

// Admin creates topics and reports consumer lag. It is safe for concurrent
// use. Create it with NewAdmin and Close it when done.
type Admin struct {
	cfg Config
	cl  *kgo.Client
	adm *kadm.Client
}

// NewAdmin validates cfg and creates an admin client. It does not contact
// the cluster; each method does, bounded by ctx and Config.StartTimeout.
func NewAdmin(cfg Config) (*Admin, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	opts := append(cfg.baseOpts(), cfg.Options...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return &Admin{cfg: cfg, cl: cl, adm: kadm.NewClient(cl)}, nil
}

// Close closes the admin client's connections.
func (a *Admin) Close() { a.cl.Close() }

// TopicSpec describes a topic to create.
type TopicSpec struct {
	// Name of the topic. Required.
	Name string
	// Partitions is the partition count. Zero means the cluster's default
	// (num.partitions).
	Partitions int32
	// ReplicationFactor is the number of replicas of each partition. Zero
	// means the cluster's default (default.replication.factor). Use 3 in
	// production so acks=all survives a broker loss.
	ReplicationFactor int16
	// Configs are topic configs such as "retention.ms", "cleanup.policy" or
	// "min.insync.replicas".
	Configs map[string]string
}

// CreateTopic creates a topic and waits for the cluster to accept it. An
// existing topic is an error wrapping ErrTopicExists, so callers that want
// "create if missing" test for it with errors.Is.
func (a *Admin) CreateTopic(ctx context.Context, spec TopicSpec) error {
	if spec.Name == "" {
		return fmt.Errorf("kafka: create topic: %w", ErrInvalidConfig)
	}
	if spec.Partitions < 0 || spec.ReplicationFactor < 0 {
		return fmt.Errorf("%w: topic %q: negative partitions or replication factor", ErrInvalidConfig, spec.Name)
	}
	parts, rf := spec.Partitions, spec.ReplicationFactor
	if parts == 0 {
		parts = -1
	}
	if rf == 0 {
		rf = -1
	}
	var configs map[string]*string
	if len(spec.Configs) > 0 {
		configs = make(map[string]*string, len(spec.Configs))
		for k, v := range spec.Configs {
			configs[k] = kadm.StringPtr(v)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.StartTimeout)
	defer cancel()
	_, err := a.adm.CreateTopic(ctx, parts, rf, configs, spec.Name)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kerr.TopicAlreadyExists):
		return fmt.Errorf("kafka: create topic %q: %w: %w", spec.Name, ErrTopicExists, err)
	}
	return wrapReqErr(ctx, "create topic "+spec.Name, err)
}

// Partitions returns the partition count of topic, or an error wrapping
// ErrUnknownTopic when the topic does not exist. While no broker answers (a
// cluster that is down refuses connections at once) it keeps asking, until
// ctx ends or Config.StartTimeout passes; then it fails with ErrUnreachable.
func (a *Admin) Partitions(ctx context.Context, topic string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.StartTimeout)
	defer cancel()
	var tds kadm.TopicDetails
	err := untilAnswered(ctx, func(ctx context.Context) (err error) {
		tds, err = a.adm.ListTopics(ctx, topic)
		return err
	})
	if err != nil {
		return 0, wrapReqErr(ctx, "list topic "+topic, err)
	}
	td, ok := tds[topic]
	switch {
	case !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition):
		return 0, fmt.Errorf("%w %q (auto-creation %s)", ErrUnknownTopic, topic, onOff(a.cfg.AllowAutoTopicCreation))
	case td.Err != nil:
		return 0, fmt.Errorf("kafka: topic %q: %w", topic, td.Err)
	}
	return len(td.Partitions), nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// unansweredBackoff spaces the attempts of untilAnswered.
var unansweredBackoff = broker.Backoff{Initial: 50 * time.Millisecond, Max: time.Second}

// untilAnswered calls fn until the cluster answers it (fn returns nil or an
// error carrying a Kafka error code) or ctx ends, waiting between attempts:
// a request fails within milliseconds when every broker refuses connections,
// and a process started during an outage should wait for the cluster
// rather than fail. It returns fn's last error.
func untilAnswered(ctx context.Context, fn func(context.Context) error) error {
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		var ke *kerr.Error
		if err == nil || errors.As(err, &ke) || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(unansweredBackoff.Delay(attempt))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// wrapReqErr turns a request that failed without a Kafka error code (the
// cluster never answered) into ErrUnreachable.
func wrapReqErr(ctx context.Context, what string, err error) error {
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return fmt.Errorf("kafka: %s: %w", what, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("kafka: %s: %w: no broker answered: %w", what, ErrUnreachable, err)
	}
	return fmt.Errorf("kafka: %s: %w: %w", what, ErrUnreachable, err)
}

// PartitionLag is the consumer lag of one partition for one group.
type PartitionLag struct {
	Topic     string
	Partition int32
	// Committed is the group's committed offset (the next offset it will
	// consume), or -1 when the group never committed on this partition.
	Committed int64
	// Start is the partition's log start offset and End its high watermark.
	Start, End int64
	// Lag is End minus Committed, or End minus Start when nothing was
	// committed: the number of records the group has yet to process.
	Lag int64
}

// Lag reports, for every partition of topic, how far group's committed
// offset is behind the high watermark. It works whether or not members of
// the group are running.
func (a *Admin) Lag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	return lag(ctx, a.adm, topic, group)
}

func lag(ctx context.Context, adm *kadm.Client, topic, group string) ([]PartitionLag, error) {
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, wrapReqErr(ctx, "list end offsets of "+topic, err)
	}
	if err := ends.Error(); err != nil {
		if errors.Is(err, kerr.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("%w %q: %w", ErrUnknownTopic, topic, err)
		}
		return nil, fmt.Errorf("kafka: end offsets of %q: %w", topic, err)
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, wrapReqErr(ctx, "list start offsets of "+topic, err)
	}
	commits, err := adm.FetchOffsetsForTopics(ctx, group, topic)
	if errors.Is(err, kerr.GroupIDNotFound) {
		commits, err = nil, nil // a group that never committed
	}
	if err != nil {
		return nil, wrapReqErr(ctx, "fetch offsets of group "+group, err)
	}
	var out []PartitionLag
	for p, e := range ends[topic] {
		pl := PartitionLag{Topic: topic, Partition: p, Committed: -1, End: e.Offset}
		if s, ok := starts.Lookup(topic, p); ok && s.Err == nil {
			pl.Start = s.Offset
		}
		if c, ok := commits.Lookup(topic, p); ok && c.Err == nil && c.At >= 0 {
			pl.Committed = c.At
		}
		if pl.Committed >= 0 {
			pl.Lag = max(0, pl.End-pl.Committed)
		} else {
			pl.Lag = max(0, pl.End-pl.Start)
		}
		out = append(out, pl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Partition < out[j].Partition })
	return out, nil
}
