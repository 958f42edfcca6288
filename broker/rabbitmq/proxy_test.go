package rabbitmq_test

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// proxy is a TCP proxy between the connections of a test and a broker node,
// for failures that must hit only those connections: cut drops them as a
// network failure would (the client reads EOF, the broker sees its peer
// go away), freeze makes them go silent without closing (only heartbeats
// tell), down cuts them and refuses new ones until up, and hold keeps back
// what the broker sends (confirms among it) while what the client sends
// still goes through. Other tests using the same node are not disturbed.
type proxy struct {
	url    string // amqp:// URL through the proxy
	target string
	l      net.Listener
	wg     sync.WaitGroup

	mu      sync.Mutex
	conns   map[*proxyConn]struct{}
	refuse  bool          // down: new connections are closed at once
	held    bool          // broker-to-client bytes wait for release
	release chan struct{} // closed when the current hold ends
	closed  bool
}

type proxyConn struct {
	client, server net.Conn
	done           chan struct{}
	once           sync.Once
	frozen         atomic.Bool // nothing more is read or written
}

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
// cut meanwhile.
func (p *proxy) pump(c *proxyConn, dst, src net.Conn, toClient bool) {
	defer p.wg.Done()
	defer func() {
		c.close()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
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
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
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
