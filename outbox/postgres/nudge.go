package postgres

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// nudger sends the notifications of Enqueue outside the caller's
// transaction (Config.NotifyInTransaction false), coalesced: at most one per
// interval, plus one at the end of an interval in which Enqueue asked for
// one, so that the last rows of a burst are announced too.
//
// Why not in the transaction: a transaction that has called pg_notify takes
// a database-wide lock before its commit record is written and holds it
// until the commit is flushed, so notifying transactions commit one at a
// time instead of sharing WAL flushes. A notification sent on its own
// connection takes the lock only for its own commit, which writes no WAL.
//
// A notification sent this way may arrive before the caller's commit. The
// relay's adaptive polling (outbox.Config.MinPollInterval) covers that: a
// woken relay that finds nothing looks again after 1, 2, 4... ms.
type nudger struct {
	pool    *pgxpool.Pool
	channel string
	every   time.Duration

	mu      sync.Mutex
	running bool // a sender goroutine is in its loop
	again   bool // Enqueue asked while it was
}

// nudge asks for a notification. It never blocks.
func (n *nudger) nudge() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		n.again = true
		return
	}
	n.running = true
	go n.run()
}

// run sends notifications, one per interval, while Enqueue asks for them.
// A failure is not reported: relays find the rows by polling.
func (n *nudger) run() {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = n.pool.Exec(ctx, "SELECT pg_notify($1, '')", n.channel)
		cancel()
		time.Sleep(n.every)
		n.mu.Lock()
		if !n.again {
			n.running = false
			n.mu.Unlock()
			return
		}
		n.again = false
		n.mu.Unlock()
	}
}
