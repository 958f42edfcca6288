package postgres

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultNotifyInterval is Config.NotifyInterval's default.
const DefaultNotifyInterval = 5 * time.Millisecond

// notifier announces appends that committed outside a caller's transaction
// with one NOTIFY per interval at most, sent through the pool after the
// interval since the last one. A NOTIFY inside the appending statement
// would cost every appending transaction PostgreSQL's commit-time lock on
// the notification queue, which serializes the commits of concurrent
// appenders; coalesced, readers wake at most an interval later.
type notifier struct {
	pool     *pgxpool.Pool
	channel  string
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	pending bool
	running bool
	last    time.Time
}

// poke asks for a notification. It never blocks: a goroutine sends it, and
// ends once no poke came in its interval.
func (n *notifier) poke() {
	n.mu.Lock()
	n.pending = true
	if n.running {
		n.mu.Unlock()
		return
	}
	n.running = true
	n.mu.Unlock()
	go n.loop()
}

func (n *notifier) loop() {
	for {
		n.mu.Lock()
		if !n.pending {
			n.running = false
			n.mu.Unlock()
			return
		}
		wait := n.interval - time.Since(n.last)
		n.mu.Unlock()
		if wait > 0 {
			time.Sleep(wait)
		}
		n.mu.Lock()
		n.pending = false
		n.last = time.Now()
		n.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.pool.Exec(ctx, "SELECT pg_notify($1, '')", n.channel)
		cancel()
		if err != nil {
			// Readers poll as well; a lost notification only delays them.
			n.log.Debug("eventsource/postgres: notify failed", "channel", n.channel, "error", err)
		}
	}
}
