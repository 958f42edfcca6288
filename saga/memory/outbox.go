package memory

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// outbox holds committed messages until its publisher accepted them, in
// commit order, retrying failed publishes with a backoff: at least once,
// in order, like a transactional outbox drained by a relay (minus
// durability).
type outbox struct {
	pub     broker.Publisher
	backoff broker.Backoff
	log     *slog.Logger

	mu       sync.Mutex
	queue    []broker.Message
	inflight int
	idle     *sync.Cond
	signal   chan struct{}
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func newOutbox(pub broker.Publisher, backoff broker.Backoff, log *slog.Logger) *outbox {
	o := &outbox{pub: pub, backoff: backoff, log: log, signal: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	o.idle = sync.NewCond(&o.mu)
	go o.run()
	return o
}

// add enqueues committed messages.
func (o *outbox) add(msgs []broker.Message) {
	if len(msgs) == 0 {
		return
	}
	o.mu.Lock()
	o.queue = append(o.queue, msgs...)
	o.mu.Unlock()
	select {
	case o.signal <- struct{}{}:
	default:
	}
}

// pending counts messages not yet accepted by the publisher.
func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queue) + o.inflight
}

// flush waits until every message enqueued so far was published or ctx
// ends.
func (o *outbox) flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		o.mu.Lock()
		o.idle.Broadcast()
		o.mu.Unlock()
	})
	defer stop()
	o.mu.Lock()
	defer o.mu.Unlock()
	for len(o.queue)+o.inflight > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		o.idle.Wait()
	}
	return nil
}

func (o *outbox) close() {
	o.once.Do(func() { close(o.stop) })
	<-o.done
}

func (o *outbox) run() {
	defer close(o.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-o.stop
		cancel()
	}()
	failures := 0
	for {
		o.mu.Lock()
		n := min(len(o.queue), 500)
		batch := o.queue[:n:n]
		o.queue = o.queue[n:]
		o.inflight = n
		if n == 0 {
			o.idle.Broadcast()
		}
		o.mu.Unlock()
		if n == 0 {
			select {
			case <-o.signal:
				continue
			case <-o.stop:
				return
			}
		}
		for {
			err := o.pub.Publish(ctx, batch...)
			if err == nil {
				failures = 0
				break
			}
			failures++
			o.log.Warn("saga/memory: publish failed; retrying", "messages", len(batch), "error", err)
			select {
			case <-o.stop:
				o.mu.Lock()
				o.queue = append(batch, o.queue...)
				o.inflight = 0
				o.idle.Broadcast()
				o.mu.Unlock()
				return
			case <-time.After(o.backoff.Delay(failures)):
			}
		}
		o.mu.Lock()
		o.inflight = 0
		o.mu.Unlock()
	}
}
