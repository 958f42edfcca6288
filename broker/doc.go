// Package broker defines the message model and the ports every steadfast
// pattern builds on: Publisher, Subscriber, Handler and Middleware.
//
// The package holds no backend code. Adapters live in subpackages named after
// their backend (broker/memory, broker/kafka, broker/rabbitmq) and each one
// passes the exported conformance suite in broker/brokertest.
//
// # Guarantees every adapter gives
//
//   - Publish returns nil only after the broker durably accepted every message
//     (Kafka: acks=all on an idempotent producer; RabbitMQ: publisher confirms
//     with mandatory routing). A non-nil error means some messages may not have
//     been accepted; a *PublishError says which. Retrying the whole call is safe
//     for consumers that deduplicate on Message.ID.
//   - Delivery is at least once. A Handler returning nil acknowledges the
//     message (ack or offset commit); returning an error makes the adapter
//     redeliver it with a larger Delivery.Attempt. The adapter owns acks and
//     commits, so no offset is ever committed past a message whose handler has
//     not returned nil.
//   - Messages with the same non-empty Key are handed to handlers of one
//     consumer group in publish order, one at a time; messages with different
//     keys are processed in parallel, up to Subscription.Concurrency.
//   - Cancelling the context given to Subscribe stops fetching, waits for the
//     handlers already running, records their results, and only then returns.
//     A handler in flight at shutdown is never abandoned and its ack is kept.
package broker
