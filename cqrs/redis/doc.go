// Package redis is the Redis read-model store of cqrs projections
// (go-redis v9).
//
// Import it as cqrsredis, the name the library's docs and examples give it
// (its backend packages share the names postgres, redis and memory):
//
//	import cqrsredis "github.com/steadfast-go/steadfast/cqrs/redis"
//
// Keys, under Config.Prefix (default "steadfast:cqrs:"): every read-model
// key of version N of projection P is "<prefix>P:vN:<key>" (Tx.Key,
// Store.VersionPrefix); the version's state (checkpoint, status, counts)
// is the hash "<prefix>P:vN:_state", its lease "<prefix>P:vN:_lease", its
// skipped events the list "<prefix>P:vN:_skipped"; the name's serving
// version and side-effects position are the hash "<prefix>P:_name". A
// version fed by a broker subscription (cqrs.Consumer) records each applied
// event ID as the key "<prefix>P:vN:_applied:<event ID>", with a TTL of
// cqrs.ConsumerConfig.Keep.
//
// Guarantees:
//
//   - A batch is one MULTI/EXEC: the handler's commands (queued through Tx:
//     HSet/HIncrBy for a hash per entity, ZIncrBy for a sorted-set
//     leaderboard, or any command on Tx.Pipe) and the checkpoint, counts
//     and side-effects position. Redis runs a transaction's commands
//     together, with no other client's command in between, and the state,
//     lease and name keys are WATCHed: when any changed since the batch
//     read them (another instance got ahead, the lease expired), EXEC runs
//     nothing and the batch fails with cqrs.ErrCheckpointConflict or
//     cqrs.ErrLeaseLost. A crash before EXEC applies nothing.
//   - Durability is Redis's: with appendonly yes and appendfsync always an
//     acknowledged batch survives a server crash; with the default
//     (everysec) the last second of batches may be lost together with their
//     checkpoint, so the read model is still consistent with it and the
//     projector re-applies them. Do not run projections on a replica that
//     can be promoted with lost writes unless re-applying is acceptable.
//     A cqrs.Consumer is different: the broker forgets a message once it
//     is acknowledged, so batches Redis loses after acknowledging them are
//     lost from the read model. Run Consumers on Redis with appendfsync
//     always, or rebuild from the event store after a server crash.
//   - cqrs.Consumer (ApplyOnce): the applied-ID keys of a group are WATCHed
//     and read, and the fresh ones are SET (with their TTL) in the group's
//     MULTI/EXEC with the handler's commands and the counts; when another
//     instance recorded one of them in between, EXEC runs nothing and the
//     group is read and applied again.
//   - Commands inside MULTI are not rolled back if one fails at run time
//     (a wrong type): keep handlers to commands that cannot fail on the
//     version's own keys.
//   - The lease is a key set NX with a TTL (Config.LeaseTTL, default 5s),
//     renewed every TTL/3 by its holder: a dead holder's lease ends within
//     the TTL.
//   - Activate is one script: it checks the version has reached the serving
//     one's checkpoint and repoints the name. Top and HGetAll
//     reads resolve the serving version in the same script as the read, so
//     a query sees one version or the other, never a mix; the old
//     version's keys stay until you delete them.
//
// Cost: per batch, one round trip to WATCH and read the state, one for the
// MULTI/EXEC.
package redis
