// Package cqrs is command/query responsibility segregation for Go services:
// typed command and query buses (in process, or over any broker of this
// module), and exactly-once projectors that build read models from the
// event store's global log, with blue/green rebuilds and read-your-writes,
// or from a broker subscription.
// Read-model stores implement its Store port: cqrs/postgres (PostgreSQL),
// cqrs/redis (Redis) and cqrs/memory (in process); all pass the suite in
// cqrs/cqrstest. cqrs/cqrscli is the operators' command line.
//
// # Buses
//
//	bus := cqrs.NewBus(cqrs.Validate(), cqrs.Logging(nil), cqrs.Tracing(nil))
//	cqrs.HandleCommand(bus, "account.deposit", cqrs.DeciderHandler(accounts, streamOf))
//	cqrs.HandleQuery(bus, "account.balance", balance) // func(ctx, Balance) (int64, error)
//
//	res, err := cqrs.Send(ctx, bus, Deposit{Account: "7", Amount: 30})
//	bal, err := cqrs.Ask[Balance, int64](ctx, bus, Balance{Account: "7"})
//
// Each command or query type has one handler, registered under a stable
// name; a second registration fails with ErrDuplicateHandler, and sending a
// type nothing handles fails with ErrUnregistered. Middleware wraps every
// dispatch (Validate calls a Validate() error method; Logging; Tracing runs
// each request in a span). A command handler returns a Result: the global
// position its events reached (DeciderHandler runs an eventsource decider
// through its repository and fills it), for read-your-writes.
//
// Over a broker, Bus.Handler serves a subscription: commands arrive as
// messages keyed by their target (per-key order), queries and commands that
// want an answer carry a reply topic, and Call waits for the reply matched
// by correlation ID, up to a timeout (ErrTimeout); a remote failure comes
// back as an error wrapping ErrRemote and, when it was one, the sentinel
// (ErrUnregistered, ErrValidation, ErrInvalidMessage). Delivery is at
// least once: make command handlers idempotent.
//
// # Projections
//
// A Projection names a read model and its version (ID) and applies batches
// of events through the store's transaction type T: a pgx transaction on
// PostgreSQL, a MULTI/EXEC pipeline on Redis. A Projector runs it:
//
//	p, err := cqrs.NewProjector(store, events, reg, cqrs.Projection[postgres.Tx]{
//		ID:     cqrs.ID{Name: "balances", Version: 1},
//		Views:  []string{"balances"},
//		Handle: apply, // func(ctx, tx postgres.Tx, b *cqrs.Batch) error
//	}, cqrs.Config{Activate: true})
//	go p.Run(ctx)
//
// Guarantees:
//
//   - Exactly once. A batch's read-model change and its checkpoint commit in
//     one transaction (PostgreSQL) or one MULTI/EXEC (Redis), so a crash at
//     any point leaves either both or neither; the restarted projector
//     resumes from the stored checkpoint. The checkpoint write is checked:
//     a batch that does not start from the stored checkpoint (an instance
//     that lost its lease while another got ahead) commits nothing and
//     fails with ErrCheckpointConflict.
//   - One active instance per projection version: the store's lease
//     (PostgreSQL: a session advisory lock, freed the moment the holder's
//     session ends; Redis: a key with a TTL renewed by the holder). Other
//     instances stand by and try every Config.TakeoverInterval.
//   - Order: the event store's global-log order, upcasters applied (see
//     eventsource.Reader).
//
// Poison events follow the projection's Policy: Stop (status stopped, Run
// returns ErrPoison; nothing is skipped), Skip (recorded with the
// checkpoint that passes it), or Retry (Backoff between attempts, the count
// kept with the checkpoint, then Stop). A failing batch is applied again
// event by event to find the poison event, so the events before it commit.
// Events the registry cannot decode (an unregistered type) stop the
// projection under Stop and Retry, and are skipped under Skip. The status is
// queryable (Store.State, cqrscli status) and Store.Reset clears it.
//
// # Projections fed by a broker subscription
//
// A Consumer applies a Projection to events a broker delivers (messages
// made by eventsource.ToMessage: the event store publishing through the
// outbox, or another service's events), for read models in another service
// than the event store's:
//
//	c, err := cqrs.NewConsumer(store, reg, projection, cqrs.ConsumerConfig{})
//	err = c.Run(ctx, subscriber, broker.Subscription{Topic: "orders", Group: "order-views"})
//
// A broker delivers at least once and orders per key only, so a position
// checkpoint would skip or repeat events. Instead the store (OnceStore:
// cqrs/postgres, cqrs/redis, cqrs/memory) records each applied event's ID
// in the transaction that applies it, and a recorded ID is never applied
// again: each event's effect happens exactly once across redeliveries,
// duplicates, crashes and competing instances (within ConsumerConfig.Keep,
// default 7 days). Deliveries handled at the same time share one
// transaction (group commit). Events of one key (stream) apply in delivery
// order; there is no order across keys, no checkpoint position (so no
// Wait), no lease and no blue/green rebuild: rebuild a version from the
// event store with a Projector. Poison and undecodable messages follow the
// Policy as with a Projector (see Consumer).
//
// # Rebuilds and side effects
//
// A new version of a projection builds its own read model (new tables, a
// new key prefix) while the serving version keeps serving; with
// Config.Activate it swaps in (Store.Activate) as soon as it has caught up:
// PostgreSQL repoints the read model's views in one transaction, Redis
// repoints the name in one script. Readers never see an empty or
// half-built read model.
//
// Side effects written in the batch's transaction (an outbox row, a
// notification row) happen exactly once per event across crashes and
// versions: Batch.Live reports whether any version of the name has already
// applied the event; a rebuild replaying history gets false for every event
// the serving version applied. The stores keep that position per name, in
// the same transaction as the batch.
//
// # Read-your-writes and lag
//
// Wait returns once the serving version's checkpoint has passed a
// command's Result.Position, or fails with ErrTimeout; Projector.Wait does
// the same for the projector of this process, woken at each commit. Each
// projector records MetricLagEvents (with a HeadReader, e.g.
// postgres.NewHead) and MetricLagSeconds, and logs progress (position,
// events/s, lag, time left) while it is behind.
package cqrs
