package rabbitmq

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Defaults for the fields of Config, PublisherConfig and SubscriberConfig
// left zero.
const (
	DefaultName         = "steadfast"
	DefaultDialTimeout  = 10 * time.Second
	DefaultHeartbeat    = 10 * time.Second
	DefaultCloseTimeout = time.Second

	DefaultChannels         = 1
	DefaultWindow           = 1000
	DefaultMaxChannelErrors = 3
	DefaultPrefetch         = 1000

	DefaultDrainTimeout = 30 * time.Second
)

// Config configures a connection. URL is required. Zero fields take their
// documented defaults; a negative value turns a setting off where its field
// says so, and is rejected elsewhere.
type Config struct {
	// URL is the amqp:// or amqps:// URL of the broker, with credentials
	// and vhost, e.g. amqp://guest:guest@localhost:5672/. Required.
	URL string
	// Name is the connection name shown by the management UI and
	// rabbitmqctl list_connections. Default DefaultName ("steadfast").
	Name string
	// Logger receives connection-lifecycle events (lost, reconnected,
	// topology re-declared). Default slog.Default(); pass a logger with a
	// discarding handler to silence it.
	Logger *slog.Logger
	// Reconnect is the schedule of waits between reconnection attempts.
	// Every failed attempt of an outage waits the next interval: a dial that
	// fails, a new connection lost while the topology is declared again on
	// it, and a connection lost less than Reconnect.Max after it was
	// established (the first redial after a connection that held longer is
	// immediate). Zero means DefaultReconnectBackoff(); otherwise zero
	// fields take broker.Backoff's defaults.
	Reconnect broker.Backoff
	// DialTimeout bounds one TCP connect plus AMQP handshake. Default
	// DefaultDialTimeout (10s).
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval; a broker silent for 1.5
	// intervals counts as lost (amqp091 sends and checks every half
	// interval, and allows three checks). Default DefaultHeartbeat (10s).
	Heartbeat time.Duration
	// CloseTimeout bounds how long Close waits for the broker to
	// acknowledge the closing of the connection, and how long
	// Publisher.Close and a stopping Subscribe call wait for it to
	// acknowledge the closing of their channels. A healthy broker answers
	// within a round trip. A broker gone silent while the TCP connection
	// stays up (a dead peer, a broken network path) would otherwise be
	// waited for until missed heartbeats end the connection, 1.5 ×
	// Heartbeat later. Past CloseTimeout, Close closes the socket without
	// the broker's answer and returns nil, logging a warning; a channel
	// close goes on in the background, until the broker answers or the
	// connection ends. Nothing is lost without the answer: a Publish call
	// whose messages were not confirmed returns an error for them, never
	// nil, and deliveries not acknowledged go back to their queue when the
	// broker drops the channel. Default DefaultCloseTimeout (1s).
	CloseTimeout time.Duration
	// TLS configures amqps:// connections. Default: the system roots and
	// the URL's host name.
	TLS *tls.Config
	// MeterProvider and TracerProvider receive the metrics and spans of
	// the publishers and subscribers built on the connection. Default: the
	// OpenTelemetry global providers, which record nothing until the
	// application installs an SDK.
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider
}

// DefaultReconnectBackoff returns the schedule Config.Reconnect uses when
// zero: 100ms after the first failed attempt, growing by half at each
// further one, at most 5s, each wait shortened by up to half at random.
func DefaultReconnectBackoff() broker.Backoff {
	return broker.Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Multiplier: 1.5, Jitter: 0.5}
}

func (c Config) withDefaults() (Config, error) {
	if c.URL == "" {
		return c, fmt.Errorf("%w: Config.URL is empty", ErrInvalidConfig)
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return c, fmt.Errorf("%w: Config.URL: %v", ErrInvalidConfig, err)
	}
	c.Name = cmp.Or(c.Name, DefaultName)
	c.Logger = telemetry.Logger(c.Logger)
	if err := c.Reconnect.Validate(); err != nil {
		return c, fmt.Errorf("%w: Config.Reconnect: %w", ErrInvalidConfig, err)
	}
	c.Reconnect = cmp.Or(c.Reconnect, DefaultReconnectBackoff())
	// Filled in, so that Reconnect.Max is the cap the waits use.
	c.Reconnect = c.Reconnect.WithDefaults()
	switch {
	case c.DialTimeout < 0:
		return c, fmt.Errorf("%w: Config.DialTimeout %v < 0", ErrInvalidConfig, c.DialTimeout)
	case c.Heartbeat < 0:
		return c, fmt.Errorf("%w: Config.Heartbeat %v < 0", ErrInvalidConfig, c.Heartbeat)
	case c.CloseTimeout < 0:
		return c, fmt.Errorf("%w: Config.CloseTimeout %v < 0", ErrInvalidConfig, c.CloseTimeout)
	}
	c.DialTimeout = cmp.Or(c.DialTimeout, DefaultDialTimeout)
	c.Heartbeat = cmp.Or(c.Heartbeat, DefaultHeartbeat)
	c.CloseTimeout = cmp.Or(c.CloseTimeout, DefaultCloseTimeout)
	return c, nil
}

// Conn is a self-healing AMQP connection. amqp091-go does not reconnect by
// itself (its experimental recovery is left off); Conn watches the
// connection, redials with exponential backoff when it is lost, declares
// again every topology declared through it, and only then lets publishers
// and subscribers open channels on the new connection. Publishers resend
// what was not confirmed and subscribers resume consuming (see their docs).
//
// Conn is safe for concurrent use. RabbitMQ advises separate connections for
// publishing and consuming, so that flow control applied to a fast
// publisher does not delay a consumer's acks: Dial twice for that.
type Conn struct {
	cfg  Config
	log  *slog.Logger
	tel  *instruments
	done chan struct{}
	stop context.CancelFunc // ends the supervisor's context; Close calls it
	wg   sync.WaitGroup
	// topo is a lock (one token) that serializes Declare and Delete with
	// the re-declaration after a reconnect; unlike a sync.Mutex, a waiter
	// gives up when its ctx ends.
	topo chan struct{}
	reg  registry // guarded by topo
	// frameSize is the frame_max the last connection negotiated.
	frameSize atomic.Int64

	mu      sync.Mutex
	cur     *amqp.Connection // nil while down
	sock    net.Conn         // cur's TCP connection
	changed chan struct{}    // closed and replaced on every state change
	blocked bool             // the broker blocked publishing (resource alarm)
	closed  bool
}

// Dial connects to cfg.URL and returns the connection. It retries with
// backoff until ctx is done when the broker is unreachable, and fails at once
// on an invalid config or refused credentials. A dial under way when ctx
// ends is abandoned, its handshake included. ctx bounds only the first
// connection: the reconnections that follow last until Close.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Conn{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "steadfast/rabbitmq", "connection", cfg.Name),
		tel:     newInstruments(cfg.MeterProvider, cfg.TracerProvider),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		topo:    make(chan struct{}, 1),
	}
	conn, sock, err := c.dialRetry(ctx, c.newRetries())
	if err != nil {
		return nil, err
	}
	c.setUp(conn, sock)
	sctx, stop := context.WithCancel(context.Background())
	c.stop = stop
	c.wg.Add(1)
	go c.supervise(sctx, conn)
	return c, nil
}

// Close closes the connection. Publishers and subscribers built on it fail
// with broker.ErrClosed afterwards: a Publish call whose messages were not
// confirmed yet returns an error for them, and a running Subscribe call
// returns. Close them first for a graceful stop.
//
// Close takes CloseTimeout at most. It waits that long for the broker to
// acknowledge the close, then closes the socket anyway (see
// Config.CloseTimeout). Close does not wait for a reconnection under way:
// a backoff wait, a dial (its handshake included) or a re-declaration of
// the topology ends at once, and nothing is dialled after Close was called.
// Close is idempotent.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	// Before cur closes, so that the supervisor sees a Close rather than a
	// lost connection to replace.
	c.stop()
	cur, sock := c.cur, c.sock
	c.cur, c.sock = nil, nil
	c.signal()
	c.mu.Unlock()
	var err error
	if cur != nil {
		err = c.closeConn(cur, sock)
	}
	c.wg.Wait()
	return err
}

// closeConn closes conn with the AMQP close handshake, waiting at most
// CloseTimeout for the broker's close-ok. CloseDeadline alone does not
// bound the wait: amqp091 pushes the socket's read deadline back whenever
// a frame arrives, so a broker that sends heartbeats and no close-ok (one
// that stopped reading the socket, as a resource alarm does) would hold it
// until amqp091's next heartbeat write fails, up to a Heartbeat later
// (TestCloseOnMutedConnection). The socket is closed at the deadline as
// well.
func (c *Conn) closeConn(conn *amqp.Connection, sock net.Conn) error {
	deadline := time.Now().Add(c.cfg.CloseTimeout)
	var cut *time.Timer
	if sock != nil {
		cut = time.AfterFunc(c.cfg.CloseTimeout, func() { _ = sock.Close() })
	}
	err := conn.CloseDeadline(deadline)
	if cut != nil {
		cut.Stop()
	}
	switch {
	case err == nil, errors.Is(err, amqp.ErrClosed):
		return nil
	case !time.Now().Before(deadline):
		c.log.Warn("rabbitmq: the broker did not acknowledge the close in time, socket closed", "timeout", c.cfg.CloseTimeout, "err", err)
		return nil
	}
	return fmt.Errorf("rabbitmq: close: %w", err)
}

// closeChannels closes chs (nil and closed ones skipped) concurrently with
// release, and waits at most CloseTimeout in all for the broker to
// acknowledge it. A close that takes longer goes on in the background: it
// ends when the broker answers, or when the connection is lost (missed
// heartbeats) or closed.
func (c *Conn) closeChannels(chs ...*amqp.Channel) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CloseTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, ch := range chs {
		if ch != nil && !ch.IsClosed() {
			wg.Go(func() { release(ctx, ch) })
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		c.log.Warn("rabbitmq: the broker did not acknowledge a channel close in time, leaving it to finish in the background", "timeout", c.cfg.CloseTimeout)
	}
}

// signal wakes everyone waiting for a state change. Callers hold c.mu.
func (c *Conn) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Conn) setUp(conn *amqp.Connection, sock net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		abandon(conn) // Close may be waiting for the supervisor
		return
	}
	c.cur, c.sock = conn, sock
	c.frameSize.Store(int64(conn.Config.FrameSize))
	c.blocked = false
	c.signal()
}

func (c *Conn) setDown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur, c.sock = nil, nil
	c.signal()
}

// dial makes one connection attempt, and returns the connection with its
// TCP connection. The TCP connect, and then the TLS and AMQP handshakes
// together, are each bounded by DialTimeout; the attempt ends as soon as
// ctx is done (the socket is closed under the handshake), and then returns
// ctx's error and no connection.
func (c *Conn) dial(ctx context.Context) (*amqp.Connection, net.Conn, error) {
	var (
		mu   sync.Mutex
		sock net.Conn // set once the TCP connection is up
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if sock != nil {
			_ = sock.Close()
		}
	})
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(c.cfg.Name)
	conn, err := amqp.DialConfig(c.cfg.URL, amqp.Config{
		Heartbeat:       c.cfg.Heartbeat,
		TLSClientConfig: c.cfg.TLS,
		Properties:      props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: c.cfg.DialTimeout}
			s, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// As amqp.DefaultDial: a deadline for the handshakes, which
			// amqp091 clears once the connection is open.
			if err := s.SetDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
				_ = s.Close()
				return nil, err
			}
			mu.Lock()
			defer mu.Unlock()
			if err := ctx.Err(); err != nil { // the AfterFunc ran already
				_ = s.Close()
				return nil, err
			}
			sock = s
			return newGuardConn(s), nil // see guard.go
		},
	})
	if !stop() {
		// ctx ended during the attempt: it failed because of it, or it
		// succeeded on a socket closed (or about to be) under it.
		if err == nil {
			abandon(conn)
		}
		return nil, nil, ctx.Err()
	}
	if err != nil {
		return nil, nil, err
	}
	// amqp091 clears the socket's deadlines once the connection is open,
	// possibly after its heartbeat check set the read deadline for the last
	// frame of the handshake; a broker silent from then on would go
	// unnoticed (TestSilentFromTheStart). Set it as that check does for
	// every frame it reads: three of its half-interval checks.
	if hb := conn.Config.Heartbeat; hb > 0 {
		_ = sock.SetReadDeadline(time.Now().Add(3 * hb / 2))
	}
	return conn, sock, nil
}

// abandon closes conn without waiting for the broker's answer, which a
// connection given up on may never send (only missed heartbeats would end
// the wait).
func abandon(conn *amqp.Connection) {
	_ = conn.CloseDeadline(time.Now())
}

// sleep waits for d, or until ctx is done and then returns its error.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// retries counts the failed attempts of one outage and gives the wait
// after each from Config.Reconnect.
type retries struct {
	b broker.Backoff
	n int
}

func (c *Conn) newRetries() *retries { return &retries{b: c.cfg.Reconnect} }

// next returns the wait after one more failed attempt.
func (r *retries) next() time.Duration {
	r.n = min(r.n+1, 1<<20)
	return r.b.Delay(r.n)
}

// reset starts a new outage.
func (r *retries) reset() { r.n = 0 }

// permanent reports dial errors that retrying cannot fix.
func permanent(err error) bool {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed
	}
	return errors.Is(err, amqp.ErrSASL) || errors.Is(err, amqp.ErrCredentials) || errors.Is(err, amqp.ErrVhost)
}

// dialRetry dials until a connection is established, waiting between
// attempts the intervals b gives. It dials nothing once ctx is done, and
// returns as soon as ctx is done, whether waiting or dialing, with an error
// wrapping ctx's. Refused credentials fail at once.
func (c *Conn) dialRetry(ctx context.Context, b *retries) (*amqp.Connection, net.Conn, error) {
	var last error // of the previous attempt
	aborted := func() error {
		if last == nil {
			return fmt.Errorf("rabbitmq: dial %s: %w", redact(c.cfg.URL), ctx.Err())
		}
		return fmt.Errorf("rabbitmq: dial %s: %w (last error: %v)", redact(c.cfg.URL), ctx.Err(), last)
	}
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return nil, nil, aborted()
		}
		conn, sock, err := c.dial(ctx)
		if err == nil {
			return conn, sock, nil
		}
		if ctx.Err() != nil {
			return nil, nil, aborted()
		}
		if permanent(err) {
			return nil, nil, fmt.Errorf("rabbitmq: dial %s: %w", redact(c.cfg.URL), err)
		}
		last = err
		wait := b.next()
		lvl := slog.LevelDebug
		if attempt == 1 {
			lvl = slog.LevelWarn
		}
		c.log.Log(ctx, lvl, "rabbitmq: dial failed, retrying", "attempt", attempt, "in", wait, "err", err)
		if sleep(ctx, wait) != nil {
			return nil, nil, aborted()
		}
	}
}

// redact hides the password of an AMQP URL.
func redact(u string) string {
	uri, err := amqp.ParseURI(u)
	if err != nil {
		return "(invalid URL)"
	}
	uri.Password = "xxx"
	return uri.String()
}

// supervise watches conn and replaces it when it is lost, until ctx ends
// (Close). An outage has one backoff (see Config.Reconnect), whose next
// interval every failed attempt waits before the next dial: a dial that
// fails, a new connection lost while the topology is declared again on it,
// and a connection lost less than Reconnect.Max after it was handed out,
// which does not end the outage. So a broker that accepts connections and
// drops them is not redialled in a tight loop. Every wait, dial and
// re-declaration ends as soon as ctx does.
func (c *Conn) supervise(ctx context.Context, conn *amqp.Connection) {
	defer c.wg.Done()
	b := c.newRetries()
	for {
		up := time.Now()
		var lost *amqp.Error
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	watch:
		for {
			select {
			case b, ok := <-blocked:
				if !ok {
					blocked = nil
					continue
				}
				c.mu.Lock()
				c.blocked = b.Active
				c.signal()
				c.mu.Unlock()
				if b.Active {
					c.log.Warn("rabbitmq: broker blocked publishing (resource alarm)", "reason", b.Reason)
				} else {
					c.log.Info("rabbitmq: broker unblocked publishing")
				}
			case lost = <-closed:
				if ctx.Err() != nil {
					return
				}
				break watch
			case <-ctx.Done():
				return
			}
		}
		c.setDown()
		c.tel.reconnects.Add(ctx, 1)
		if held := time.Since(up); held >= c.cfg.Reconnect.Max {
			b.reset()
			c.log.Warn("rabbitmq: connection lost", "err", lost)
		} else {
			wait := b.next()
			c.log.Warn("rabbitmq: connection lost soon after it was established, reconnecting after a backoff", "err", lost, "up", held, "in", wait)
			if sleep(ctx, wait) != nil {
				return
			}
		}
		var sock net.Conn
		for {
			next, nextSock, err := c.dialRetry(ctx, b)
			if err != nil {
				// Only Close or refused credentials end the loop; the
				// latter is logged and retried: the credentials may be
				// restored.
				if ctx.Err() != nil {
					return
				}
				c.log.Error("rabbitmq: reconnect failed", "err", err)
				if sleep(ctx, c.cfg.Reconnect.Max) != nil {
					return
				}
				continue
			}
			if err := c.redeclare(ctx, next); err != nil {
				abandon(next)
				if ctx.Err() != nil {
					return
				}
				wait := b.next()
				c.log.Warn("rabbitmq: topology re-declaration interrupted, reconnecting after a backoff", "in", wait, "err", err)
				if sleep(ctx, wait) != nil {
					return
				}
				continue
			}
			conn, sock = next, nextSock
			break
		}
		c.setUp(conn, sock)
		c.log.Info("rabbitmq: reconnected")
	}
}

// redeclare declares every recorded entity on conn before it is handed out.
// Conflicts (someone changed an entity while we were away) are logged and
// skipped: the entities that conflict keep the broker's definition. An error
// is returned only when conn itself fails, or when ctx ends: conn is then
// abandoned, so that a re-declaration waiting on a silent connection ends
// at once instead of after missed heartbeats.
func (c *Conn) redeclare(ctx context.Context, conn *amqp.Connection) error {
	if err := c.lockTopology(ctx); err != nil {
		return err
	}
	defer c.unlockTopology()
	t := c.reg.topology()
	if len(t.Exchanges)+len(t.Queues)+len(t.Bindings) == 0 {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { abandon(conn) })
	defer stop()
	d := &declarer{open: func(ctx context.Context) (*amqp.Channel, error) { return openChannel(ctx, conn) }}
	defer d.close(ctx)
	var failed int
	err := d.declare(ctx, t, func(err error) bool {
		if conn.IsClosed() {
			return false
		}
		failed++
		c.log.Error("rabbitmq: re-declaration after reconnect failed", "err", err)
		return true
	})
	if err == nil && conn.IsClosed() {
		err = ErrConnectionLost
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("rabbitmq: re-declaration: %w (%v)", ctx.Err(), err)
		}
		return err
	}
	c.log.Info("rabbitmq: topology re-declared", "exchanges", len(t.Exchanges), "queues", len(t.Queues), "bindings", len(t.Bindings), "failed", failed)
	return nil
}

// current waits until the connection is up and returns it.
func (c *Conn) current(ctx context.Context) (*amqp.Connection, error) {
	for {
		c.mu.Lock()
		cur, closed, changed := c.cur, c.closed, c.changed
		c.mu.Unlock()
		if closed {
			return nil, broker.ErrClosed
		}
		if cur != nil && !cur.IsClosed() {
			return cur, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rabbitmq: waiting for the connection: %w", context.Cause(ctx))
		case <-changed:
		case <-time.After(50 * time.Millisecond):
			// The connection closed but the supervisor has not noticed yet.
		}
	}
}

// channel opens a channel on the current connection, waiting for a
// reconnect when the connection is down. It returns when ctx ends, even
// while the broker does not answer (see await).
func (c *Conn) channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		conn, err := c.current(ctx)
		if err != nil {
			return nil, err
		}
		ch, err := openChannel(ctx, conn)
		if err == nil {
			return ch, nil
		}
		if !conn.IsClosed() {
			return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
		}
	}
}

// waitUnblocked waits while the broker blocks publishing on this
// connection, so a publish honours ctx instead of hanging in a socket write.
func (c *Conn) waitUnblocked(ctx context.Context) error {
	for {
		c.mu.Lock()
		blocked, changed, closed := c.blocked, c.changed, c.closed
		c.mu.Unlock()
		if closed {
			return broker.ErrClosed
		}
		if !blocked {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rabbitmq: broker blocks publishing (resource alarm): %w", ctx.Err())
		case <-changed:
		}
	}
}

// openNow opens a channel on the current connection without waiting for a
// reconnect; it fails with ErrConnectionLost while the connection is down,
// and returns when ctx ends, even while the broker does not answer (see
// await).
func (c *Conn) openNow(ctx context.Context) (*amqp.Channel, error) {
	c.mu.Lock()
	cur, closed := c.cur, c.closed
	c.mu.Unlock()
	if closed {
		return nil, broker.ErrClosed
	}
	if cur == nil {
		return nil, ErrConnectionLost
	}
	ch, err := openChannel(ctx, cur)
	switch {
	case isAbandoned(err):
		return nil, fmt.Errorf("rabbitmq: open channel: %w", err)
	case err != nil:
		return nil, fmt.Errorf("%w: open channel: %v", ErrConnectionLost, err)
	}
	return ch, nil
}

// lostDuring reports whether err means the connection or channel dropped
// under an operation (rather than the broker refusing it), so that the
// operation is worth repeating on the next connection.
func lostDuring(err error) bool {
	if err == nil || isAbandoned(err) {
		return false
	}
	if errors.Is(err, ErrConnectionLost) || errors.Is(err, amqp.ErrClosed) || errors.Is(err, io.EOF) {
		return true
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		if !ae.Server {
			return true
		}
		switch ae.Code {
		case amqp.ConnectionForced, amqp.FrameError, amqp.InternalError, amqp.UnexpectedFrame, amqp.ChannelError:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// Declare declares t now and again after every reconnect. It is idempotent:
// entities that exist with the same properties are left alone. A conflicting
// declaration returns a *DeclareError matching ErrTopologyConflict, and the
// entities after it are not declared; nothing of t is remembered for
// re-declaration unless all of it succeeded. Declare waits for the
// connection while it is down, until ctx is done, and returns when ctx
// ends while the broker has not answered a declaration (the error wraps
// ctx's cause): that declaration may still take effect on the broker.
func (c *Conn) Declare(ctx context.Context, t Topology) error {
	if err := t.Validate(); err != nil {
		return err
	}
	return c.withTopology(ctx, func(d *declarer) error {
		var declErr error
		if err := d.declare(ctx, t, func(err error) bool {
			declErr = err
			return false
		}); err != nil {
			return err
		}
		if declErr != nil {
			return declErr
		}
		c.reg.add(t)
		return nil
	})
}

// withTopology runs fn under the topology lock with a declarer on the
// current connection, and runs it again on the next connection when the
// connection drops meanwhile. It returns when ctx ends, even while the
// broker does not answer (fn makes its requests through the declarer).
func (c *Conn) withTopology(ctx context.Context, fn func(d *declarer) error) error {
	for {
		if _, err := c.current(ctx); err != nil {
			return err
		}
		if err := c.lockTopology(ctx); err != nil {
			return err
		}
		d := &declarer{open: c.openNow}
		err := fn(d)
		d.close(ctx)
		c.unlockTopology()
		if err == nil || !lostDuring(err) {
			return err
		}
		c.log.Debug("rabbitmq: connection lost during declaration, retrying", "err", err)
		if perr := c.pause(ctx); perr != nil {
			return fmt.Errorf("%w (after %v)", perr, err)
		}
	}
}

// Delete deletes the bindings, queues and exchanges of t (in that order)
// and forgets them, so they are not declared again after a reconnect.
// Entities that do not exist are skipped. Queues are deleted with their
// messages.
func (c *Conn) Delete(ctx context.Context, t Topology) error {
	return c.withTopology(ctx, func(d *declarer) error {
		c.reg.remove(t)
		var errs []error
		step := func(what string, f func(ch *amqp.Channel) error) error {
			opened, err := d.call(ctx, f)
			switch {
			case err == nil:
			case !opened, lostDuring(err):
				return err
			case isAbandoned(err):
				return fmt.Errorf("rabbitmq: %s: %w", what, err)
			case amqpCode(err) != amqp.NotFound:
				errs = append(errs, fmt.Errorf("rabbitmq: %s: %w", what, err))
			}
			return nil
		}
		for _, b := range t.Bindings {
			if err := step("unbind "+b.String(), func(ch *amqp.Channel) error {
				return ch.QueueUnbind(b.Queue, b.Key, b.Exchange, b.Args)
			}); err != nil {
				return err
			}
		}
		for _, q := range t.Queues {
			if err := step(fmt.Sprintf("delete queue %q", q.Name), func(ch *amqp.Channel) error {
				_, err := ch.QueueDelete(q.Name, false, false, false)
				return err
			}); err != nil {
				return err
			}
		}
		for _, e := range t.Exchanges {
			if err := step(fmt.Sprintf("delete exchange %q", e.Name), func(ch *amqp.Channel) error {
				return ch.ExchangeDelete(e.Name, false, false)
			}); err != nil {
				return err
			}
		}
		return errors.Join(errs...)
	})
}

// lockTopology takes the topology lock, or returns an error wrapping ctx's
// cause when ctx ends first.
func (c *Conn) lockTopology(ctx context.Context) error {
	select {
	case c.topo <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rabbitmq: waiting for another declaration: %w", context.Cause(ctx))
	}
}

func (c *Conn) unlockTopology() { <-c.topo }

// pause waits a little before a retry.
func (c *Conn) pause(ctx context.Context) error {
	t := time.NewTimer(c.cfg.Reconnect.Initial)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return broker.ErrClosed
	case <-t.C:
		return nil
	}
}
