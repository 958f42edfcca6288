package kafkadlq

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/internal/inspect"
	"github.com/steadfast-go/steadfast/dlq/internal/metrics"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Marker record headers. A Kafka log cannot lose one record in the middle,
// so the Inspector records that a dead letter was replayed or purged with a
// marker record in the same partition: a record without key or value whose
// HeaderMarker names what happened ("replayed" or "purged"),
// HeaderMarkerOffset the offset of the dead letter, HeaderMarkerID its
// message ID and HeaderMarkerDigest the SHA-256 digest of its record (key,
// value, headers and timestamp, in hexadecimal). Listing skips markers and
// the dead letters they mark; the prefix of a partition that holds only
// marked dead letters and markers is deleted for real (DeleteRecords).
//
// A marker is honoured only when it follows the dead letter it names in
// its partition and the record at that offset has that digest. Message
// headers never become marker headers (the adapters escape the library's
// header namespace on the wire), so no message, once dead-lettered, passes
// for a marker; and a record written to the dead-letter topic by another
// client hides no dead letter whose content it does not know. Who can read
// and write the dead-letter topic can still mark its dead letters: grant
// that (Kafka ACLs) to the consumers that dead-letter and the operators
// only.
const (
	HeaderMarker       = dlq.HeaderPrefix + "marker"
	HeaderMarkerOffset = dlq.HeaderPrefix + "marker-offset"
	HeaderMarkerID     = dlq.HeaderPrefix + "marker-id"
	HeaderMarkerDigest = dlq.HeaderPrefix + "marker-digest"
)

// InspectorConfig configures an Inspector.
type InspectorConfig struct {
	// Config reaches the cluster. Brokers is required. The Inspector's
	// franz-go clients start from Config.ClientOpts, as the adapter's do:
	// Logger gets franz-go's warnings and errors, and Options apply.
	kafka.Config
	// Topic is the dead-letter topic. Required.
	Topic string
	// Publisher publishes replays. Default: a kafka.Publisher on Config,
	// closed by Close.
	Publisher broker.Publisher
	// IdleTimeout bounds how long reading the topic may go without
	// receiving a record before it fails. Default 30s.
	IdleTimeout time.Duration
}

// Inspector lists, replays and purges the dead letters of one Kafka topic.
// It implements dlq.Inspector and is safe for concurrent use, though two
// operations running at once on one topic may both replay a dead letter.
// Create it with NewInspector and Close it when done.
//
// List reads the topic from its start to the last stable offsets at the
// time of the call with a client outside any consumer group, so it never
// moves a consumer's offsets. It reads committed records only: dead letters
// written in Kafka transactions (by a kafka.Pipeline) appear once their
// transaction commits, and never when it aborts. Reading costs one pass
// over the topic per call, holding its dead letters in memory. Replay publishes, then appends markers; a crash in
// between replays those dead letters again next time (with the same message
// IDs). Purging everything deletes the records up to the end offsets read
// (DeleteRecords); purging a selection appends markers. Consumers of the
// dead-letter topic other than the Inspector see the markers as records
// with an empty value and the HeaderMarker header.
//
// Errors match the adapter's sentinels: on a topic that does not exist,
// List, Replay and Purge fail with an error matching both dlq.ErrNotFound
// and kafka.ErrUnknownTopic; on a cluster that does not answer within
// Config.StartTimeout, with kafka.ErrUnreachable.
type Inspector struct {
	cfg  InspectorConfig
	cl   *kgo.Client
	adm  *kadm.Client
	pub  broker.Publisher
	own  *kafka.Publisher
	tel  *metrics.Instruments
	log  *slog.Logger
	opts []kgo.Opt
}

var _ dlq.Inspector = (*Inspector)(nil)

// NewInspector validates cfg and creates the clients. It does not contact
// the cluster.
func NewInspector(cfg InspectorConfig) (*Inspector, error) {
	switch {
	case cfg.Topic == "":
		return nil, fmt.Errorf("%w: InspectorConfig.Topic is empty", dlq.ErrInvalidConfig)
	case len(cfg.Brokers) == 0:
		return nil, fmt.Errorf("%w: InspectorConfig.Brokers is empty", dlq.ErrInvalidConfig)
	case cfg.IdleTimeout < 0:
		return nil, fmt.Errorf("%w: negative IdleTimeout", dlq.ErrInvalidConfig)
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "steadfast-dlq"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 15 * time.Second
	}
	in := &Inspector{cfg: cfg, pub: cfg.Publisher, log: telemetry.Logger(cfg.Logger)}
	var err error
	if in.tel, err = metrics.New(cfg.MeterProvider); err != nil {
		return nil, fmt.Errorf("kafkadlq: metrics: %w", err)
	}
	if in.opts, err = cfg.Config.ClientOpts(); err != nil {
		return nil, fmt.Errorf("%w: %w", dlq.ErrInvalidConfig, err)
	}
	in.cl, err = kgo.NewClient(append(slices.Clone(in.opts),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.RequiredAcks(kgo.AllISRAcks()))...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", dlq.ErrInvalidConfig, err)
	}
	in.adm = kadm.NewClient(in.cl)
	if in.pub == nil {
		if in.own, err = kafka.NewPublisher(kafka.PublisherConfig{Config: cfg.Config}); err != nil {
			in.cl.Close()
			return nil, err
		}
		in.pub = in.own
	}
	return in, nil
}

// Close closes the Inspector's clients.
func (in *Inspector) Close() error {
	var err error
	if in.own != nil {
		err = in.own.Close()
	}
	in.cl.Close()
	return err
}

// entry is a record of the dead-letter topic.
type entry struct {
	off    int64
	marker bool
	dl     dlq.DeadLetter
	digest string // of a dead letter's record
}

// marker is a marker record as read: it marks the dead letter at off in
// partition p if that record has digest.
type marker struct {
	p          int32
	at, off    int64 // the marker's own offset, the dead letter's
	id, digest string
}

// snapshot is what one reading of the topic found.
type snapshot struct {
	start, end map[int32]int64   // per partition, at the time of reading
	parts      map[int32][]entry // records in offset order
	markers    []marker
	resolved   map[int32]map[int64]bool
}

// resolve marks the dead letters that markers name truly: those that
// precede their marker in its partition, with the digest it names.
func (s *snapshot) resolve() {
	for _, m := range s.markers {
		if m.off >= m.at {
			continue
		}
		es := s.parts[m.p]
		i, ok := slices.BinarySearchFunc(es, m.off, func(e entry, off int64) int { return cmp.Compare(e.off, off) })
		if !ok || es[i].marker || es[i].digest != m.digest || (m.id != "" && es[i].dl.ID() != m.id) {
			continue
		}
		s.resolve1(m.p, m.off)
	}
}

func (s *snapshot) resolve1(p int32, off int64) {
	if s.resolved[p] == nil {
		s.resolved[p] = map[int64]bool{}
	}
	s.resolved[p][off] = true
}

// digest is the hexadecimal SHA-256 digest of a record's key, value,
// headers and timestamp, each length-prefixed.
func digest(r *kgo.Record) string {
	h := sha256.New()
	var n [8]byte
	put := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	put(r.Key)
	put(r.Value)
	binary.BigEndian.PutUint64(n[:], uint64(len(r.Headers)))
	h.Write(n[:])
	for _, hd := range r.Headers {
		put([]byte(hd.Key))
		put(hd.Value)
	}
	binary.BigEndian.PutUint64(n[:], uint64(r.Timestamp.UnixMilli()))
	h.Write(n[:])
	return hex.EncodeToString(h.Sum(nil))
}

// pending returns the dead letters not marked, oldest failure first.
func (s *snapshot) pending() []dlq.DeadLetter {
	var out []dlq.DeadLetter
	for p, es := range s.parts {
		for _, e := range es {
			if !e.marker && !s.resolved[p][e.off] {
				out = append(out, e.dl)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b dlq.DeadLetter) int {
		if c := a.FailedAt().Compare(b.FailedAt()); c != 0 {
			return c
		}
		return strings.Compare(a.Position, b.Position)
	})
	return out
}

// read reads the whole topic up to its current end offsets.
func (in *Inspector) read(ctx context.Context) (*snapshot, error) {
	topic := in.cfg.Topic
	lctx, cancel := context.WithTimeout(ctx, in.cfg.StartTimeout)
	defer cancel()
	// The last stable offsets: records of transactions still open are
	// left for a later reading.
	ends, err := in.adm.ListCommittedOffsets(lctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, in.wrap(lctx, "list end offsets", err)
	}
	starts, err := in.adm.ListStartOffsets(lctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, in.wrap(lctx, "list start offsets", err)
	}
	s := &snapshot{start: map[int32]int64{}, end: map[int32]int64{}, parts: map[int32][]entry{}, resolved: map[int32]map[int64]bool{}}
	consume := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		st, _ := starts.Lookup(topic, o.Partition)
		s.start[o.Partition], s.end[o.Partition] = st.Offset, o.Offset
		if st.Offset < o.Offset {
			consume[o.Partition] = kgo.NewOffset().At(st.Offset)
		}
	})
	if len(consume) == 0 {
		return s, nil
	}
	rd, err := kgo.NewClient(append(slices.Clone(in.opts),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: consume}),
		// Committed records only, and the transaction markers too, so the
		// offset just below the end is always seen even when a transaction
		// marker holds it.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(),
		kgo.FetchMaxWait(500*time.Millisecond))...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", dlq.ErrInvalidConfig, err)
	}
	defer rd.Close()
	left := len(consume)
	next := map[int32]int64{} // per partition, the offset after the last record seen
	for p, o := range consume {
		next[p] = o.EpochOffset().Offset
	}
	for left > 0 {
		pctx, cancel := context.WithTimeout(ctx, in.cfg.IdleTimeout)
		fs := rd.PollFetches(pctx)
		cancel()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("kafkadlq: read %q: %w", topic, err)
		}
		if fs.Empty() && pctx.Err() != nil {
			return nil, fmt.Errorf("kafkadlq: read %q: no record for %v with %d partitions unread", topic, in.cfg.IdleTimeout, left)
		}
		var ferr error
		fs.EachError(func(_ string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				ferr = fmt.Errorf("kafkadlq: read %q partition %d: %w", topic, p, err)
			}
		})
		if ferr != nil {
			return nil, ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			end := s.end[r.Partition]
			if r.Offset >= end || r.Offset < next[r.Partition] {
				return // past the snapshot, or already seen
			}
			next[r.Partition] = r.Offset + 1
			if !r.Attrs.IsControl() {
				s.parts[r.Partition] = append(s.parts[r.Partition], s.decode(r))
			}
			if r.Offset == end-1 {
				left--
			}
		})
	}
	s.resolve()
	return s, nil
}

// decode turns a record into an entry, noting markers: records without
// key or value whose headers carry HeaderMarker. Any other record is a
// dead letter, whatever its headers.
func (s *snapshot) decode(r *kgo.Record) entry {
	if len(r.Key) == 0 && len(r.Value) == 0 {
		var m marker
		found := false
		for _, h := range r.Headers {
			switch h.Key {
			case HeaderMarker:
				found = true
			case HeaderMarkerOffset:
				off, err := strconv.ParseInt(string(h.Value), 10, 64)
				if err != nil {
					off = -1
				}
				m.off = off
			case HeaderMarkerID:
				m.id = string(h.Value)
			case HeaderMarkerDigest:
				m.digest = string(h.Value)
			}
		}
		if found {
			m.p, m.at = r.Partition, r.Offset
			if m.off >= 0 && m.digest != "" {
				s.markers = append(s.markers, m)
			}
			return entry{off: r.Offset, marker: true}
		}
	}
	return entry{off: r.Offset, dl: dlq.NewDeadLetter(kafka.MessageFromRecord(r), position(r.Partition, r.Offset)), digest: digest(r)}
}

func position(p int32, off int64) string {
	return strconv.FormatInt(int64(p), 10) + "/" + strconv.FormatInt(off, 10)
}

func parsePosition(pos string) (int32, int64, bool) {
	ps, os, ok := strings.Cut(pos, "/")
	if !ok {
		return 0, 0, false
	}
	p, err1 := strconv.ParseInt(ps, 10, 32)
	off, err2 := strconv.ParseInt(os, 10, 64)
	return int32(p), off, err1 == nil && err2 == nil
}

// wrap classifies the error of a request about the dead-letter topic the
// way broker/kafka classifies its Admin's (Partitions, Lag), so the
// Inspector's errors match the adapter's sentinels, with one deliberate
// difference: an unknown topic also wraps dlq.ErrNotFound, which
// dlq.Inspector promises for a missing destination. broker/kafka keeps its
// mapping unexported, so it is repeated here; keep the two in step.
//
//   - UnknownTopicOrPartition: dlq.ErrNotFound and kafka.ErrUnknownTopic.
//   - Any other Kafka error code: a broker answered; the code (a
//     *kerr.Error) is wrapped as it is.
//   - No Kafka error code: no broker answered before ctx ended or the
//     client gave up: kafka.ErrUnreachable (wrapping broker.ErrUnavailable).
func (in *Inspector) wrap(ctx context.Context, what string, err error) error {
	var ke *kerr.Error
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("kafkadlq: %s of %q: %w: %w: %w", what, in.cfg.Topic, dlq.ErrNotFound, kafka.ErrUnknownTopic, err)
	case errors.As(err, &ke):
		return fmt.Errorf("kafkadlq: %s of %q: %w", what, in.cfg.Topic, err)
	case ctx.Err() != nil:
		return fmt.Errorf("kafkadlq: %s of %q: %w: no broker answered: %w", what, in.cfg.Topic, kafka.ErrUnreachable, err)
	}
	return fmt.Errorf("kafkadlq: %s of %q: %w: %w", what, in.cfg.Topic, kafka.ErrUnreachable, err)
}

// List returns the dead letters matching f that were neither replayed nor
// purged, oldest failure first.
func (in *Inspector) List(ctx context.Context, f dlq.Filter) ([]dlq.DeadLetter, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	s, err := in.read(ctx)
	if err != nil {
		return nil, err
	}
	return f.Select(s.pending()), nil
}

// Replay publishes the dead letters matching f (see dlq.ReplayMessage),
// marks them replayed and deletes the prefixes of partitions left without
// pending dead letters. It returns how many were replayed; when some could
// not be, the error says which and why, and they stay listed.
func (in *Inspector) Replay(ctx context.Context, f dlq.Filter, opts dlq.ReplayOptions) (int, error) {
	if err := f.Validate(); err != nil {
		return 0, err
	}
	s, err := in.read(ctx)
	if err != nil {
		return 0, err
	}
	sel := f.Select(s.pending())
	msgs, from, errs := inspect.ReplayMessages(sel, opts, time.Now())
	var done []dlq.DeadLetter
	for i := 0; i < len(msgs); i += inspect.Chunk {
		j := min(i+inspect.Chunk, len(msgs))
		err := in.pub.Publish(ctx, msgs[i:j]...)
		done = append(done, inspect.Published(from[i:j], err)...)
		if err != nil {
			errs = append(errs, fmt.Errorf("kafkadlq: replay: %w", err))
		}
		if ctx.Err() != nil {
			break
		}
	}
	if err := in.mark(ctx, s, done, "replayed"); err != nil {
		errs = append(errs, err)
	}
	in.tel.Replay(ctx, in.cfg.Topic, len(done))
	in.log.Info("kafkadlq: replayed dead letters", "topic", in.cfg.Topic, "count", len(done))
	return len(done), errors.Join(errs...)
}

// Purge removes the dead letters matching f and returns how many. With
// the zero Filter it deletes every record up to the end offsets read;
// otherwise it marks the selected dead letters purged and deletes the
// partition prefixes left without pending dead letters.
func (in *Inspector) Purge(ctx context.Context, f dlq.Filter) (int, error) {
	if err := f.Validate(); err != nil {
		return 0, err
	}
	s, err := in.read(ctx)
	if err != nil {
		return 0, err
	}
	sel := f.Select(s.pending())
	if f.All() {
		if err := in.deleteTo(ctx, s.end, s.start); err != nil {
			return 0, err
		}
		in.tel.Purge(ctx, in.cfg.Topic, len(sel))
		return len(sel), nil
	}
	if err := in.mark(ctx, s, sel, "purged"); err != nil {
		return 0, err
	}
	in.tel.Purge(ctx, in.cfg.Topic, len(sel))
	return len(sel), nil
}

// mark appends a marker for each dead letter, then deletes what became
// dead weight.
func (in *Inspector) mark(ctx context.Context, s *snapshot, dls []dlq.DeadLetter, what string) error {
	if len(dls) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, 0, len(dls))
	for _, dl := range dls {
		p, off, ok := parsePosition(dl.Position)
		if !ok {
			continue
		}
		es := s.parts[p]
		i, ok := slices.BinarySearchFunc(es, off, func(e entry, off int64) int { return cmp.Compare(e.off, off) })
		if !ok || es[i].marker {
			continue
		}
		recs = append(recs, &kgo.Record{Topic: in.cfg.Topic, Partition: p, Headers: []kgo.RecordHeader{
			{Key: HeaderMarker, Value: []byte(what)},
			{Key: HeaderMarkerOffset, Value: []byte(strconv.FormatInt(off, 10))},
			{Key: HeaderMarkerID, Value: []byte(dl.ID())},
			{Key: HeaderMarkerDigest, Value: []byte(es[i].digest)},
		}})
		s.resolve1(p, off)
	}
	if err := in.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("kafkadlq: mark %d dead letters %s in %q (they will be listed again): %w", len(recs), what, in.cfg.Topic, err)
	}
	// Delete each partition's prefix of markers and marked dead letters.
	to := map[int32]int64{}
	for p, es := range s.parts {
		cut := s.start[p]
		for _, e := range es {
			if !e.marker && !s.resolved[p][e.off] {
				break
			}
			cut = e.off + 1
		}
		if cut > s.start[p] {
			to[p] = cut
		}
	}
	return in.deleteTo(ctx, to, s.start)
}

// deleteTo deletes the records of each partition below to[p] when that is
// past start[p].
func (in *Inspector) deleteTo(ctx context.Context, to, start map[int32]int64) error {
	offs := kadm.Offsets{}
	for p, at := range to {
		if at > start[p] {
			if offs[in.cfg.Topic] == nil {
				offs[in.cfg.Topic] = map[int32]kadm.Offset{}
			}
			offs[in.cfg.Topic][p] = kadm.Offset{Topic: in.cfg.Topic, Partition: p, At: at}
		}
	}
	if len(offs) == 0 {
		return nil
	}
	res, err := in.adm.DeleteRecords(ctx, offs)
	if err == nil {
		err = res.Error()
	}
	if err != nil {
		return fmt.Errorf("kafkadlq: delete records of %q: %w", in.cfg.Topic, err)
	}
	return nil
}
