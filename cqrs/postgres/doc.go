// Package postgres is the PostgreSQL read-model store of cqrs projections
// (pgx v5).
//
// Import it as cqrspg, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import cqrspg "github.com/steadfast-go/steadfast/cqrs/postgres"
//
// Tables: the checkpoints table (Config.Table, default
// "cqrs_checkpoints": one row per projection version with its checkpoint,
// status and counts), "<table>_names" (the serving version of each name and
// how far its side effects are done), "<table>_skipped" and
// "<table>_applied" (the event IDs each version fed by a broker
// subscription applied, kept for cqrs.ConsumerConfig.Keep). Schema returns
// the DDL; Migrate applies it. The read models are the application's own
// tables: version N of a read model table T is T_v<N> (VersionTable,
// Tx.Table), and the application's queries read the view T, which
// Store.Activate points at the serving version.
//
// Guarantees:
//
//   - A batch runs in one transaction: the handler's writes (through Tx),
//     the checkpoint row, the side-effects position and the skipped events
//     commit together or not at all. The checkpoint row is locked and
//     checked against the batch's starting checkpoint first
//     (cqrs.ErrCheckpointConflict otherwise).
//   - The lease is a session advisory lock (pg_try_advisory_lock) on a
//     connection taken from the pool for as long as the lease lasts, and
//     every batch runs on that connection: no batch commits without the
//     lock. A dead holder's session ends with its process (or when the
//     server notices the lost connection), which frees the lock at once.
//     A projector therefore holds two connections while it runs (the lease
//     and the event store's LISTEN): size the pool for it.
//   - cqrs.Consumer (ApplyOnce): a group's event IDs are inserted into
//     "<table>_applied" first, in sorted order, in the group's transaction;
//     an ID already there is not fresh. A concurrent transaction inserting
//     the same ID waits for the first and then finds it, so exactly one
//     applies it. Deadlocks and serialization failures (handlers of two
//     instances writing the same rows) retry the transaction up to 5 times.
//     The counts go to the version's checkpoints row, which every
//     instance's group updates last: instances of one version commit one
//     at a time.
//   - Activate repoints the views (CREATE OR REPLACE VIEW) and records the
//     serving version in one transaction, after checking that the version
//     has reached the serving one's checkpoint: queries see one version or
//     the other, never a mix. The new version's table must have the view's
//     columns in order (more may follow).
//
// Cost: per batch one transaction with two statements of the store (lock
// and read the checkpoint; write it) beside the handler's.
package postgres
