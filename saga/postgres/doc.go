// Package postgres implements the saga ports on PostgreSQL with pgx v5:
// Store (the orchestrator's instances, history and timers), Participants
// (participants' exactly-once records) and Flows (the choreography
// tracker's timelines). Commands, replies and park events leave through
// the transactional outbox of package outbox/postgres, in the same
// transaction as the state change that sends them; run an outbox.Relay on
// that outbox to publish them.
//
// Import it as sagapg, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import sagapg "github.com/steadfast-go/steadfast/saga/postgres"
//
// # Tables
//
// Store keeps one row per instance (default table "saga") and its history
// ("saga_history", one row per event, unique per instance by sequence and
// by message ID). Participants keeps one row per participant, instance and
// step ("saga_participant"); Flows one row per flow ("saga_flow") and one
// per event ("saga_flow_event", unique by message ID). Each store ships its
// DDL embedded (Schema, ParticipantSchema, FlowSchema, or the Schema
// method) and an idempotent Migrate serialized by an advisory lock. Table
// names are validated ("name" or "schema.name", lowercase) and quoted.
//
// # Transactions and locking
//
// A transition reads the instance row without locking it, decides (running
// local steps in savepoints of the same transaction), then updates the row
// with WHERE revision = <the revision read> and appends the history in the
// same statement, enqueues the outbox rows and commits. A concurrent
// transition of the same instance blocks on the row lock at its update
// and, once the first commits, matches no row: the store reports
// saga.ErrConflict and the engine decides again in a fresh transaction. A
// reply already recorded is found by the history's unique message index in
// the transaction that would apply it again, and a concurrent insert of the
// same message fails on that index (also a conflict). Timers are the
// instance rows' wake_at column: an engine claims the earliest due row of
// the definitions it has, FOR UPDATE SKIP LOCKED, in a transaction that
// applies what is due and commits, so engines firing timers never wait for
// each other. A transition whose new wake-up is within the engines' poll
// interval, and every operator request, sends NOTIFY on Config.Channel;
// engines LISTEN on one connection each and poll as a fallback.
//
// Participants locks the step's record with SELECT ... FOR UPDATE, runs the
// participant's function in the same transaction (write through TxOf), and
// writes the record and the reply before committing; a refusal rolls back
// and records itself in a second transaction. Two transactions that both
// find no record race on the primary key: the loser rolls back (its
// function's writes with it) and decides again, finding the winner's
// record.
//
// # Costs and tuning
//
// A reply transition is five statements (BEGIN, read, update with history,
// outbox insert, COMMIT) and a participant command five (BEGIN, record
// lock, record write, outbox insert, COMMIT); a local step adds a SAVEPOINT
// and its RELEASE. The outbox relay then claims, publishes and marks or
// deletes every command and reply. The outbox's defaults suit this load:
// Enqueue's notification is sent outside the transaction, coalesced, so
// commits are not serialized on PostgreSQL's notification lock, and
// published rows are deleted rather than kept; outbox.Config.WakeDelay (a
// few milliseconds) gathers commits into fewer, larger claims at the price
// of that much latency per hop. BenchmarkSagas measures completed sagas per second
// beside the same writes done with raw pgx.
//
// Finished instances and their history are deleted by the engines after
// saga.Config.Retention; Participants.Cleanup deletes old participant
// records (keep them longer than any command can be redelivered).
package postgres
