// Package outbox is the transactional outbox: a business change and the
// events it produces commit in one database transaction, and a Relay then
// publishes the events to a broker, at least once, in per-key order, across
// crashes and broker outages.
//
// # Pieces
//
//   - Store, the port: the outbox table. outbox/postgres implements it on
//     PostgreSQL (and adds Enqueue, which writes rows in the caller's
//     transaction); outbox/memory keeps it in process memory for examples
//     and tests (same claims and order, no durability); outbox/outboxtest is
//     the conformance suite every Store passes, plus the relay suite that
//     proves the guarantees below on a store and a broker.
//   - Relay: claims batches of rows, publishes them through any
//     broker.Publisher (broker/kafka, broker/rabbitmq, broker/memory) and
//     records the outcome. Any number of relays, in one process or many,
//     share one outbox.
//
// A typical service:
//
//	store, _ := outboxpg.New(pool, outboxpg.Config{})
//	_ = store.Migrate(ctx)
//
//	// In the request: the order and its event commit together.
//	tx, _ := pool.Begin(ctx)
//	_, _ = tx.Exec(ctx, `INSERT INTO orders ...`)
//	m := broker.NewMessage("orders", payload)
//	m.Key = orderID
//	_ = store.Enqueue(ctx, tx, m)
//	_ = tx.Commit(ctx)
//
//	// In the background, in as many processes as you like:
//	relay, _ := outbox.NewRelay(store, publisher, outbox.Config{})
//	go relay.Run(ctx)
//
// # Delivery
//
// A row is deleted (or, with Config.KeepPublished, marked published) in the
// same transaction that claimed it, after the broker acknowledged it. A relay that dies in
// between leaves the row pending, and it is published again: delivery is at
// least once, duplicates carry the same Message.ID, and a crash duplicates at
// most the batch that relay had in flight. A store that ends claims on its
// own after a while (the postgres store, after its ClaimTimeout) tells the
// relay when (ClaimDeadline), and the relay completes each claim before then,
// leaving rows it had no time for to a later claim. Pair the relay with an
// idempotent consumer (package idempotency) for effects that happen exactly
// once.
//
// # Per-key order
//
// The rows of one key are published in ID order (the order Enqueue wrote
// them) and a key's next row is never published while an earlier one is
// unsent, in flight, or waiting for a retry. This holds across relays
// because a Store hands each key to one claim at a time (on PostgreSQL: a
// transaction-scoped advisory lock per key, taken with a try-lock so relays
// skip keys that are in flight elsewhere instead of waiting) and because a
// claim always starts at the key's oldest unpublished row. Within a batch a
// key's rows go to the broker in one Publish call, in order, except after
// that call failed, when the relay retries its rows one per call (still in
// order) to find the one the broker refuses. Rows without a key have no
// order and are shared out freely.
//
// Late commits: a transaction that wrote its row first (lower ID) but
// committed after others is never skipped, because claims look at what is
// pending, not past a high-water mark; its row becomes the head of its key
// when it commits. ID order equals commit order for transactions that
// enqueue for a key one after the other, which is the case whenever they
// lock the business row the key names, and always with the postgres store's
// LockKeys option. Transactions that enqueue for one key concurrently, with
// nothing ordering them, have no order to keep; their rows are published in
// ID order among the rows visible when claimed.
//
// A parked row is the one exception, chosen by Config.BlockKeyOnPark: the
// key either stops until the row is redriven or deleted, or flows on past
// it.
//
// # Failures
//
// A message the broker refuses is charged an attempt, retried after
// Config.Backoff, and parked (status dead, with the reason) after
// Config.MaxAttempts; its key waits meanwhile and every other key flows.
// Rows that can never be published (empty topic, too large, undecodable)
// are parked at once. When the broker is unavailable, nothing is charged:
// rows accumulate and drain when it returns. Store.Parked, Store.Redrive and
// Store.Delete list, requeue and remove parked rows; operators do the same
// with the steadfast command ("steadfast outbox list", package
// outbox/outboxcli). See Relay for how failures are pinned on rows.
//
// # Observability
//
// The relay logs through log/slog and records OpenTelemetry metrics
// (published, failed, parked and republished rows, batch publish latency and
// size, and gauges for pending rows, the age of the oldest pending row and
// parked rows; see the Metric constants) and a span per batch publish. The
// stores' Enqueue carries the caller's trace context into the message
// headers (W3C traceparent); once an SDK records spans, the relay publishes
// each such message in a "publish <topic>" span that continues that trace,
// so the consumers' spans are children of the relay's publish, in the
// trace of the request that enqueued the message.
package outbox
