package rabbitdlq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/rabbitmq"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/internal/inspect"
	"github.com/steadfast-go/steadfast/dlq/internal/metrics"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// InspectorConfig configures an Inspector.
type InspectorConfig struct {
	// URL is the amqp:// or amqps:// URL of the broker. Required.
	URL string
	// TLS configures amqps:// connections. Default: the system roots.
	TLS *tls.Config
	// Queue is the dead-letter queue, or a retry chain's parking queue.
	// Required.
	Queue string
	// Publisher publishes replays. Default: a rabbitmq.Publisher on a
	// connection the Inspector dials on the first replay, closed by Close.
	Publisher broker.Publisher
	// DialTimeout bounds connecting to the broker. Default 10s.
	DialTimeout time.Duration
	// Logger receives a line per replay and purge. Default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives steadfast.dlq.replayed and steadfast.dlq.purged.
	// Default: the OpenTelemetry global provider.
	MeterProvider metric.MeterProvider
}

// Inspector lists, replays and purges the dead letters of one RabbitMQ
// queue. It implements dlq.Inspector and is safe for concurrent use.
// Create it with NewInspector and Close it when done.
//
// Each operation opens its own connection and reads the queue with
// basic.get without acknowledging, up to the message count the queue had
// when the operation began (dead letters arriving meanwhile are left for
// the next one); it acknowledges the dead letters it replayed or purged and
// closes the channel, which returns every other message to its place in
// the queue. While an operation runs, the messages it holds are invisible
// to other readers of the queue, and every message read counts as a
// delivery (a quorum queue's delivery limit would drop messages: use a
// classic queue or none). Reading costs one round trip per message and
// keeps the messages in memory until the operation ends.
//
// Replay acknowledges a dead letter only after its replay was confirmed by
// the broker; a crash in between leaves it in the queue, and the next
// replay publishes it again with the same message ID.
//
// Messages without an envelope (a retry chain's parking queue, or
// messages dead-lettered by the broker itself) are listed with what their
// x-death history tells: the original topic and key, the queue that
// rejected them, how often, and approximate failure times (x-death keeps
// the first time of each event, to the second). They replay to that topic.
type Inspector struct {
	cfg InspectorConfig
	tel *metrics.Instruments
	log *slog.Logger

	mu   sync.Mutex
	conn *rabbitmq.Conn      // for the default publisher, dialled lazily
	own  *rabbitmq.Publisher // the default publisher, or nil
}

var _ dlq.Inspector = (*Inspector)(nil)

// NewInspector validates cfg. It does not contact the broker.
func NewInspector(cfg InspectorConfig) (*Inspector, error) {
	switch {
	case cfg.Queue == "":
		return nil, fmt.Errorf("%w: InspectorConfig.Queue is empty", dlq.ErrInvalidConfig)
	case cfg.URL == "":
		return nil, fmt.Errorf("%w: InspectorConfig.URL is empty", dlq.ErrInvalidConfig)
	case cfg.DialTimeout < 0:
		return nil, fmt.Errorf("%w: negative DialTimeout", dlq.ErrInvalidConfig)
	}
	if _, err := amqp.ParseURI(cfg.URL); err != nil {
		return nil, fmt.Errorf("%w: InspectorConfig.URL: %w", dlq.ErrInvalidConfig, err)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	in := &Inspector{cfg: cfg, log: telemetry.Logger(cfg.Logger)}
	var err error
	if in.tel, err = metrics.New(cfg.MeterProvider); err != nil {
		return nil, fmt.Errorf("rabbitdlq: metrics: %w", err)
	}
	return in, nil
}

// Close closes the connection of the default publisher, if one was made.
func (in *Inspector) Close() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	var errs []error
	if in.own != nil {
		errs = append(errs, in.own.Close())
		in.own = nil
	}
	if in.conn != nil {
		errs = append(errs, in.conn.Close())
		in.conn = nil
	}
	return errors.Join(errs...)
}

// publisher returns the replay publisher, dialling the default one on
// first use.
func (in *Inspector) publisher(ctx context.Context) (broker.Publisher, error) {
	if in.cfg.Publisher != nil {
		return cleanPublisher{in.cfg.Publisher}, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.own == nil {
		dctx, cancel := context.WithTimeout(ctx, in.cfg.DialTimeout)
		defer cancel()
		conn, err := rabbitmq.Dial(dctx, rabbitmq.Config{URL: in.cfg.URL, TLS: in.cfg.TLS, Name: "steadfast-dlq", Logger: in.cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("rabbitdlq: dial for replays: %w", err)
		}
		pub, err := rabbitmq.NewPublisher(conn, rabbitmq.PublisherConfig{NoDeclare: true, Logger: in.cfg.Logger})
		if err != nil {
			conn.Close()
			return nil, err
		}
		in.conn, in.own = conn, pub
	}
	return cleanPublisher{in.own}, nil
}

// session is one operation's hold on the queue.
type session struct {
	conn *amqp.Connection
	ch   *amqp.Channel
	tags map[string][]uint64 // position -> delivery tag
	dls  []dlq.DeadLetter    // in queue order
}

// close returns every message not acknowledged to the queue.
func (s *session) close() {
	_ = s.ch.Close()
	_ = s.conn.Close()
}

// open connects and reads the queue's messages without acknowledging
// them; the caller must close the session.
func (in *Inspector) open(ctx context.Context) (*session, error) {
	q := in.cfg.Queue
	conn, err := amqp.DialConfig(in.cfg.URL, amqp.Config{
		TLSClientConfig: in.cfg.TLS,
		Properties:      amqp.Table{"connection_name": "steadfast-dlq inspector"},
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: in.cfg.DialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the AMQP handshake; amqp091 clears it afterwards.
			return c, c.SetDeadline(time.Now().Add(in.cfg.DialTimeout))
		},
	})
	if err != nil {
		return nil, fmt.Errorf("rabbitdlq: queue %q: dial: %w", q, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("rabbitdlq: queue %q: open channel: %w", q, err)
	}
	s := &session{conn: conn, ch: ch, tags: map[string][]uint64{}}
	info, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
	if err != nil {
		s.close()
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return nil, fmt.Errorf("rabbitdlq: queue %q: %w: %w", q, dlq.ErrNotFound, err)
		}
		return nil, fmt.Errorf("rabbitdlq: queue %q: %w", q, err)
	}
	for i := range info.Messages {
		if err := ctx.Err(); err != nil {
			s.close()
			return nil, fmt.Errorf("rabbitdlq: read queue %q: %w", q, err)
		}
		d, ok, err := ch.Get(q, false)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("rabbitdlq: read queue %q: %w", q, err)
		}
		if !ok {
			break
		}
		pos := strconv.Itoa(i + 1)
		s.tags[pos] = append(s.tags[pos], d.DeliveryTag)
		s.dls = append(s.dls, deadLetter(&d, pos))
	}
	return s, nil
}

// ack acknowledges the dead letters dls of s.
func (s *session) ack(dls []dlq.DeadLetter) error {
	for _, dl := range dls {
		for _, tag := range s.tags[dl.Position] {
			if err := s.ch.Ack(tag, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// List returns the dead letters matching f, oldest failure first, and
// puts every message back.
func (in *Inspector) List(ctx context.Context, f dlq.Filter) ([]dlq.DeadLetter, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	s, err := in.open(ctx)
	if err != nil {
		return nil, err
	}
	defer s.close()
	inspect.SortByFailure(s.dls)
	return f.Select(s.dls), nil
}

// Replay publishes the dead letters matching f (see dlq.ReplayMessage) and
// acknowledges those the broker confirmed. It returns how many were
// replayed; when some could not be, the error says which and why, and
// they stay in the queue.
func (in *Inspector) Replay(ctx context.Context, f dlq.Filter, opts dlq.ReplayOptions) (int, error) {
	if err := f.Validate(); err != nil {
		return 0, err
	}
	pub, err := in.publisher(ctx)
	if err != nil {
		return 0, err
	}
	s, err := in.open(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	inspect.SortByFailure(s.dls)
	sel := f.Select(s.dls)
	msgs, from, errs := inspect.ReplayMessages(sel, opts, time.Now())
	done := 0
	for i := 0; i < len(msgs) && ctx.Err() == nil; i += inspect.Chunk {
		j := min(i+inspect.Chunk, len(msgs))
		err := pub.Publish(ctx, msgs[i:j]...)
		ok := inspect.Published(from[i:j], err)
		if err != nil {
			errs = append(errs, fmt.Errorf("rabbitdlq: replay from %q: %w", in.cfg.Queue, err))
		}
		if err := s.ack(ok); err != nil {
			errs = append(errs, fmt.Errorf("rabbitdlq: acknowledge replayed dead letters in %q (they will be replayed again): %w", in.cfg.Queue, err))
			break
		}
		done += len(ok)
	}
	in.tel.Replay(ctx, in.cfg.Queue, done)
	in.log.Info("rabbitdlq: replayed dead letters", "queue", in.cfg.Queue, "count", done)
	return done, errors.Join(errs...)
}

// Purge deletes the dead letters matching f and returns how many. The zero
// Filter deletes every message the queue held when Purge began.
func (in *Inspector) Purge(ctx context.Context, f dlq.Filter) (int, error) {
	if err := f.Validate(); err != nil {
		return 0, err
	}
	s, err := in.open(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	inspect.SortByFailure(s.dls)
	sel := f.Select(s.dls)
	if err := s.ack(sel); err != nil {
		return 0, fmt.Errorf("rabbitdlq: purge %q: %w", in.cfg.Queue, err)
	}
	// Acknowledgements are asynchronous: closing the channel cleanly
	// makes the broker process them before it answers.
	if err := s.ch.Close(); err != nil {
		return 0, fmt.Errorf("rabbitdlq: purge %q: %w", in.cfg.Queue, err)
	}
	in.tel.Purge(ctx, in.cfg.Queue, len(sel))
	in.log.Info("rabbitdlq: purged dead letters", "queue", in.cfg.Queue, "count", len(sel))
	return len(sel), nil
}

// deadLetter decodes a message read from the queue with the adapter's own
// wire mapping.
func deadLetter(d *amqp.Delivery, pos string) dlq.DeadLetter {
	m := rabbitmq.MessageFromDelivery(d)
	if m.ID == "" {
		m.ID = "rabbitmq/" + d.Exchange + "/" + pos
	}
	dl := dlq.NewDeadLetter(m, pos)
	if errors.Is(dl.EnvelopeErr, dlq.ErrNoEnvelope) {
		if deaths, err := rabbitmq.Deaths(m.Headers); err == nil && len(deaths) > 0 {
			fromDeaths(&dl, deaths)
		}
	}
	return dl
}

// fromDeaths fills the envelope of a dead letter without one from its
// x-death history: the entry for its rejections names the original
// exchange and routing key and the queue that rejected it.
func fromDeaths(dl *dlq.DeadLetter, deaths []rabbitmq.Death) {
	e := &dl.Envelope
	e.Class = dlq.ClassTransient
	for _, d := range deaths {
		if d.Time.After(e.LastFailure) {
			e.LastFailure = d.Time
		}
		if d.Reason != "rejected" || e.Queue != "" {
			continue
		}
		e.Queue, e.Topic = d.Queue, d.Exchange
		if len(d.RoutingKeys) > 0 {
			e.Key = d.RoutingKeys[0]
		}
		// The count comes from the wire: clamped, never negative.
		e.Attempts = int(min(max(d.Count, 0), math.MaxInt32))
		e.FirstFailure = d.Time
		e.Error = fmt.Sprintf("rejected %d times by queue %s (no dead-letter envelope)", d.Count, e.Queue)
	}
	if e.Topic != "" {
		dl.Message.Topic, dl.Message.Key = e.Topic, e.Key
	}
}
