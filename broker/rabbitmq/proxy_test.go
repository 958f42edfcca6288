package rabbitmq_test

import (
	"encoding/binary"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// proxy is a TCP proxy between the connections of a test and a broker node,
// for failures that must hit only those connections: cut drops them as a
// network failure would (the client reads EOF, the broker sees its peer
// go away), freeze makes them go silent without closing (only heartbeats
// tell), mute makes the broker ignore them while still sending heartbeats, down cuts them and refuses new ones until up, and hold keeps back
// what the broker sends (confirms among it) while what the client sends
// still goes through. trap makes the connections opened afterwards fail at
// a chosen step of the protocol (a handshake, a declaration). Other tests
// using the same node are not disturbed.
type proxy struct {
	url    string // amqp:// URL through the proxy
	target string
	l      net.Listener
	wg     sync.WaitGroup

	accepted atomic.Int64 // connections accepted (refused ones included): the client's dial attempts
	tripped  atomic.Int64 // connections a trap cut or froze

	sentMu sync.Mutex
	sent   map[method]int // method frames the clients sent, by method

	mu      sync.Mutex
	conns   map[*proxyConn]struct{}
	refuse  bool          // down: new connections are closed at once
	held    bool          // broker-to-client bytes wait for release
	release chan struct{} // closed when the current hold ends
	trapped *trapRule     // what new connections are set to fail on; nil: nothing
	closed  bool
}

type proxyConn struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
	frozen         atomic.Bool // nothing more is read or written
	trap           *trapRule   // the trap set when the connection was accepted

	toClient sync.Mutex   // serializes writes to the client
	frames   frameScanner // of the bytes written to the client
	muted    bool         // under toClient: the broker's bytes are dropped
}

// method names an AMQP method by its class and method IDs.
type method struct{ class, id uint16 }

// Methods the tests set traps on.
var (
	connectionStart  = method{10, 10} // broker: first frame of the handshake
	connectionOpenOK = method{10, 41} // broker: last frame of the handshake
	exchangeDeclare  = method{40, 10}
	queueDeclare     = method{50, 10}
	queueBind        = method{50, 20}
	channelOpen      = method{20, 10}
	channelClose     = method{20, 40}
	basicConsume     = method{60, 20}
	confirmSelect    = method{85, 10}
)

// trapRule: a connection is cut (or frozen) right after a method frame of
// one of methods went through it, in either direction.
type trapRule struct {
	freeze  bool
	methods []method
}

func (r *trapRule) matches(m method) bool { return slices.Contains(r.methods, m) }

func (c *proxyConn) close() {
	c.once.Do(func() {
		close(c.done)
		c.client.Close()
		c.server.Close()
	})
}

// newProxy starts a proxy in front of the node of brokerURL, stopped at
// t's cleanup.
func newProxy(t testing.TB, brokerURL string) *proxy {
	t.Helper()
	uri, err := amqp.ParseURI(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{
		target:  net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port)),
		l:       l,
		conns:   map[*proxyConn]struct{}{},
		release: make(chan struct{}),
		sent:    map[method]int{},
	}
	addr := l.Addr().(*net.TCPAddr)
	uri.Host, uri.Port = addr.IP.String(), addr.Port
	p.url = uri.String()
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.l.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		if p.refusing() {
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxyConn{client: client, server: server, done: make(chan struct{})}
		p.mu.Lock()
		if p.refuse || p.closed { // went down while dialing
			p.mu.Unlock()
			c.close()
			continue
		}
		c.trap = p.trapped
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(c, server, client, false)
		go p.pump(c, client, server, true)
	}
}

func (p *proxy) refusing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refuse || p.closed
}

// pump copies src to dst until either side closes; bytes for the client
// wait while the proxy holds them, and are dropped if the connection is
// cut meanwhile. It counts the method frames the client sends (see
// sentCount). On a trapped connection, it cuts or freezes the connection
// once the bytes holding a trapped method frame went through.
func (p *proxy) pump(c *proxyConn, dst, src net.Conn, toClient bool) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	var frames frameScanner
	if !toClient {
		frames.skip = len("AMQP\x00\x00\x09\x01") // the client's protocol header
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if c.frozen.Load() {
			<-c.done
			return
		}
		if n > 0 {
			if toClient && !p.waitReleased(c) {
				return
			}
			if err := c.forward(dst, buf[:n], toClient); err != nil {
				return
			}
			if frames.scan(buf[:n], func(m method) bool {
				if !toClient {
					p.sentMu.Lock()
					p.sent[m]++
					p.sentMu.Unlock()
				}
				return c.trap != nil && c.trap.matches(m)
			}) {
				p.tripped.Add(1)
				if !c.trap.freeze {
					return // cut: the deferred close drops both sides
				}
				c.frozen.Store(true)
				<-c.done
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward writes b, read from the other side, to dst, unless c is muted.
func (c *proxyConn) forward(dst net.Conn, b []byte, toClient bool) error {
	if !toClient {
		c.toClient.Lock() // for muted
		muted := c.muted
		c.toClient.Unlock()
		if muted {
			return nil
		}
		_, err := dst.Write(b)
		return err
	}
	c.toClient.Lock()
	defer c.toClient.Unlock()
	if c.muted {
		return nil
	}
	c.frames.scan(b, func(method) bool { return false })
	_, err := dst.Write(b)
	return err
}

// waitReleased waits while the proxy holds broker-to-client bytes. It
// reports false when c was cut meanwhile.
func (p *proxy) waitReleased(c *proxyConn) bool {
	for {
		p.mu.Lock()
		held, release := p.held, p.release
		p.mu.Unlock()
		if c.frozen.Load() {
			<-c.done
			return false
		}
		select {
		case <-c.done:
			return false
		default:
		}
		if !held {
			return true
		}
		select {
		case <-c.done:
			return false
		case <-release:
		}
	}
}

// hold keeps back everything the broker sends on the current and new
// connections until cut or down (which drop it) or up.
func (p *proxy) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = true
}

// cut closes every connection through the proxy, dropping what hold kept
// back, and lets new connections through unheld.
func (p *proxy) cut() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	p.unhold()
}

// freeze makes every connection through the proxy go silent: from now on
// nothing is read from either side (so the client's writes block once the
// socket buffers fill) and nothing more is written, what hold kept back
// included, until the proxy closes. New connections go through unheld.
func (p *proxy) freeze() {
	p.mu.Lock()
	for c := range p.conns {
		c.frozen.Store(true)
	}
	p.mu.Unlock()
	p.unhold()
}

// mute makes every connection through the proxy look like one to a broker
// that stopped reading it but still sends heartbeats (as a broker whose
// connection is blocked, or a stuck node, may): from now on what either
// side sends is dropped, and the client gets a heartbeat frame every
// interval. Call it while no frame is under way to the client (the
// connections are idle); it fails t otherwise.
func (p *proxy) mute(t testing.TB, interval time.Duration) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.toClient.Lock()
		if len(c.frames.head) > 0 || c.frames.skip > 0 {
			c.toClient.Unlock()
			t.Fatal("proxy: mute: a frame to the client is under way")
		}
		c.muted = true
		c.toClient.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			heartbeat := []byte{8, 0, 0, 0, 0, 0, 0, 0xce} // type 8, channel 0, empty payload, end octet
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-c.done:
					return
				case <-tick.C:
				}
				c.toClient.Lock()
				_, err := c.client.Write(heartbeat)
				c.toClient.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
}

// trap makes every connection accepted from now on fail right after a
// method frame of one of methods went through it (sent by either side):
// it is cut, or with freeze it goes silent as freeze makes it. untrap
// ends it for later connections.
func (p *proxy) trap(freeze bool, methods ...method) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trapped = &trapRule{freeze: freeze, methods: methods}
}

// sentCount returns how many frames of method m the clients sent through
// the proxy.
func (p *proxy) sentCount(m method) int {
	p.sentMu.Lock()
	defer p.sentMu.Unlock()
	return p.sent[m]
}

func (p *proxy) untrap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.trapped = nil
}

// frameScanner finds the method frames in one direction of an AMQP byte
// stream: frames are a type octet (1 for a method), a channel (2 octets), a
// payload size (4 octets), the payload (a method's starts with its class
// and method IDs, 2 octets each) and an end octet.
type frameScanner struct {
	head []byte // the current frame's header, and IDs for a method frame
	skip int    // octets of the stream still to pass over
}

// scan reads the next bytes of the stream and reports whether a method
// frame that match accepts begins in them.
func (s *frameScanner) scan(b []byte, match func(method) bool) bool {
	found := false
	for len(b) > 0 {
		if s.skip > 0 {
			n := min(s.skip, len(b))
			s.skip -= n
			b = b[n:]
			continue
		}
		n := min(s.want()-len(s.head), len(b))
		s.head = append(s.head, b[:n]...)
		b = b[n:]
		if len(s.head) < s.want() {
			continue
		}
		s.skip = int(binary.BigEndian.Uint32(s.head[3:7])) + 1 // the payload and the end octet
		if s.head[0] == 1 {
			s.skip -= 4 // the IDs, read already
			if match(method{binary.BigEndian.Uint16(s.head[7:9]), binary.BigEndian.Uint16(s.head[9:11])}) {
				found = true
			}
		}
		s.head = s.head[:0]
	}
	return found
}

// want is how many octets the current frame's head has once complete.
func (s *frameScanner) want() int {
	if len(s.head) >= 7 && s.head[0] == 1 {
		return 11
	}
	return 7
}

// down cuts every connection and refuses new ones until up.
func (p *proxy) down() {
	p.mu.Lock()
	p.refuse = true
	p.mu.Unlock()
	p.cut()
}

// up accepts connections again and ends a hold.
func (p *proxy) up() {
	p.mu.Lock()
	p.refuse = false
	p.mu.Unlock()
	p.unhold()
}

func (p *proxy) unhold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held {
		p.held = false
		close(p.release)
		p.release = make(chan struct{})
	}
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.l.Close()
	p.cut()
	p.wg.Wait()
}
