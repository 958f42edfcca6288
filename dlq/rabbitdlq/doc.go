// Package rabbitdlq runs the dlq retry and dead-letter patterns on
// RabbitMQ: a Consumer that wires dlq.Consumer to the rabbitmq adapter and
// declares the dead-letter exchanges and queues, and an Inspector that
// lists, replays and purges a dead-letter queue (or a retry chain's
// parking queue).
//
// # Topology
//
// For a topic "orders" consumed by group "billing" the group queue is
// "orders.billing" (see rabbitmq.Groups) and dead letters go to the
// exchange "orders.billing.dlq", bound with "#" to the queue of the same
// name, which keeps them until an operator acts. Dead letters keep the
// original routing key, payload and headers, plus the dlq envelope headers.
//
// # Where retries wait
//
// dlq.Config.Retries is the choice between per-key order and non-blocking
// retries:
//
//   - dlq.RetryInProcess (default): the middleware retries inside the
//     handler call after the policy's backoff; the message's key waits,
//     order is kept.
//   - dlq.RetryRedeliver with Subscriber.Groups.Retry set (RetryChain
//     builds one from a dlq.Policy): a failed message is rejected into the
//     adapter's TTL/dead-letter-exchange retry chain and comes back after
//     the level's delay, with Delivery.Attempt read from its x-death
//     history; the queue keeps flowing and later messages of the key
//     overtake it. The middleware dead-letters it, with its envelope, on
//     attempt Policy.MaxAttempts (by default the chain's last), so the
//     chain's parking queue only receives messages whose dead-letter
//     publish failed on the last attempt: nothing is lost, and the
//     Inspector reads and replays the parking queue too.
//   - dlq.RetryRedeliver without a chain: the adapter retries in process
//     after the policy's backoff, blocking the key, order kept.
//
// Retry topics (dlq.RetryTopics) are Kafka's pattern and are refused here.
//
// # Headers
//
// The headers RabbitMQ adds on its own dead-lettering (x-death,
// x-first-death-*, x-last-death-*, x-delivery-count) are dropped from dead
// letters and replays: the envelope records the failure, and a replayed
// message starts a fresh history.
package rabbitdlq
