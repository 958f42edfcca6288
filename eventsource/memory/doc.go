// Package memory is an in-process event store with the semantics of the
// PostgreSQL store (eventsource/postgres), for tests, examples and
// single-process programs. It keeps everything in memory: nothing survives
// the process.
//
// Import it as esmem, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import esmem "github.com/steadfast-go/steadfast/eventsource/memory"
//
// Appends run in transactions (Store.Begin, or one per Store.Append call).
// A transaction is numbered when it first appends and its events get their
// global sequence numbers then, exactly as PostgreSQL numbers a transaction
// when it first writes and draws positions at insert; its events become
// visible when it commits. A transaction that appends to a stream holds
// that stream until it ends: another transaction appending to it waits
// (bounded by its context), as it would on the PostgreSQL row lock. The
// global log is ordered by (transaction, sequence) and a reader only sees
// transactions before the oldest open one (the fence), so the memory store
// shows the same ordering, stalls and stall reports as PostgreSQL, which is
// what lets one conformance suite (eventsource/eventsourcetest) test both.
//
// ShredStream drops a stream's payloads (there is no key to delete: the
// payloads are simply forgotten), so crypto-shredding logic can be tested
// without a database.
package memory
