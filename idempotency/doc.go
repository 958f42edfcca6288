// Package idempotency makes message consumers and HTTP endpoints idempotent:
// each piece of work runs once per key, however many times and however
// concurrently it is delivered.
//
// # Pieces
//
//   - Store, the port: Acquire a key (get a Lease, or the Record of a key
//     done before, or ErrInProgress), then Complete or Release the lease.
//     Backends: idempotency/postgres, idempotency/redis, idempotency/memory;
//     each passes the conformance suite in idempotency/idempotencytest.
//   - Consumer, middleware for broker.Handler: duplicates are acknowledged
//     without calling the handler; a handler error (or panic) never marks its
//     key, so the redelivery runs again; a delivery arriving while another
//     worker holds its key returns ErrInProgress so the broker retries it
//     later.
//   - KeyFunc strategies: MessageID (default), KafkaOffset
//     ("topic:partition:offset"), Header, or your own business-key function.
//   - HTTP, net/http middleware for the Idempotency-Key request header: the
//     first request runs and its response is stored; repeats get the stored
//     response; a repeat while the first runs gets 409, a reused key with a
//     different request 422, a missing key on a route that requires one 400.
//     Keys are scoped per caller: by default a digest of the request's
//     credentials (CredentialsClient), so a stored response is replayed only
//     to the caller that produced it; HTTPConfig.Client names callers by your
//     own authentication.
//
// # Choosing a store
//
// Postgres is the durable choice. Its Handler claims the key inside the
// transaction that writes the business effect, so the effect and the mark
// commit together: a crash after the commit but before the broker ack skips
// the redelivery, and a crash or error before the commit processes it. No
// other arrangement gives "effect exactly once" with an at-least-once broker.
//
// Redis is fast and shared across processes, but best-effort: Redis can lose
// acknowledged writes on failover or restart, and a lease can expire under a
// slow handler, so a duplicate can occasionally run again. Use it when a rare
// duplicate is harmless and you want to save the work; use Postgres when it
// is not.
//
// The memory store is for tests and for single-process programs that need no
// deduplication across restarts.
//
// # What the middleware guarantees
//
// With the generic Consumer middleware, the handler's effect happens outside
// the store, so it is at least once: a process that dies after the effect and
// before Complete repeats the effect on redelivery. What the middleware does
// guarantee is that handlers for one key never run at once while a lease
// lasts, that duplicates arriving after a success are never run while the
// store keeps the key (and does not lose it), and that a failure is always
// retried.
//
// Observability follows the library's telemetry rule: middleware takes a
// *slog.Logger (default slog.Default()) and an OpenTelemetry
// metric.MeterProvider (default: the global provider) and counts outcomes in
// steadfast.idempotency.outcomes; the outcome is also set as an attribute of
// the current span.
package idempotency
