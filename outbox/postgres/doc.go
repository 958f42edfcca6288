// Package postgres is the outbox on PostgreSQL (pgx v5): Enqueue writes
// messages into an outbox table inside the caller's transaction, and Store
// implements outbox.Store and outbox.Notifier for the relay.
//
// Import it as outboxpg, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
//
// # Writing
//
// Enqueue takes a DB, which pgx.Tx, *pgxpool.Pool and *pgx.Conn satisfy.
// Pass the transaction that writes your business rows: the messages commit
// with them or not at all. Several messages in one call are written in one
// statement, in order. Enqueue wakes listening relays (NOTIFY on
// Config.Channel) so they publish within milliseconds; polling remains the
// fallback when a notification is lost. By default the notification is
// sent outside the caller's transaction, at most one per
// Config.NotifyInterval, because a NOTIFY inside it would make PostgreSQL
// commit the notifying transactions one at a time; a relay woken before the
// commit finds the rows by adaptive polling (outbox.Config.MinPollInterval).
// Config.NotifyInTransaction restores the notification at commit.
//
// # Schema
//
// One table (default "outbox", Config.Table) with three partial indexes:
// pending rows by id (the relay's scan), rows that failed or were parked by
// key (blocked keys; small), and published rows by time (retention). Migrate
// creates them idempotently, serialized by an advisory lock so concurrent
// deployments do not race; Schema returns the DDL for migration tools. Table
// names are validated and always quoted.
//
// # Claiming
//
// A claim is one transaction per batch on its own connection. It takes a
// transaction-scoped advisory try-lock per key (class: the table's OID) on
// the keys of the oldest pending rows, skipping keys another relay holds,
// until the chosen keys cover the batch; locks those rows FOR UPDATE SKIP
// LOCKED, re-checking each row's latest version; and, in a second statement
// whose snapshot postdates the key locks, drops keys the previous holder left
// blocked. The relay publishes while the transaction stays open, then marks
// (or deletes) the rows and commits. If the relay dies, PostgreSQL aborts the
// transaction and every lock is released: the rows are claimed again, which
// is the at-least-once duplicate window. Config.ClaimTimeout bounds how long
// a stuck relay can hold its keys. The transaction holds a transaction ID
// while it runs (row locks need one), so a relay stuck in a slow publish
// holds back vacuum for that long too.
//
// Costs: a claim reads about twice the batch of index entries to choose its
// keys, holds one advisory lock per distinct key (from the server's shared
// lock table, sized by max_locks_per_transaction), and keeping published
// rows (outbox.Config.KeepPublished) is an UPDATE per row, several times
// the cost of the DELETE the relay does by default.
package postgres
