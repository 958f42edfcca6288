// Package memory is an outbox.Store kept in process memory, so that
// examples and unit tests of code that uses the outbox run with no
// database. It passes the same conformance suite as outbox/postgres
// (outbox/outboxtest): claims exclude each other per key, a claim starts at
// each key's oldest unpublished row, failed rows wait for their retry time,
// parked rows can be listed, redriven and deleted, and late commits are
// published in ID order. It implements outbox.Notifier, so a relay on it
// publishes new rows at once.
//
// Import it as outboxmem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import outboxmem "github.com/steadfast-go/steadfast/outbox/memory"
//
// What it does not give, and cannot: durability (nothing survives the
// process) and atomicity with your own data. In PostgreSQL, the outbox row
// and the business row commit in one database transaction. Here a Tx holds
// outbox rows only; write your in-memory state in the same step of your
// code as the commit, after everything that can fail:
//
//	err := store.BeginFunc(ctx, func(tx *memory.Tx) error {
//		if err := tx.Enqueue(ctx, event); err != nil {
//			return err // nothing written, nothing changed
//		}
//		orders[id] = order // last: cannot fail
//		return nil
//	})
//
// Use it for examples and tests; use outbox/postgres in production (its
// Enqueue takes your pgx.Tx instead of a memory Tx; nothing else changes).
package memory
