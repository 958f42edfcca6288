// Package rabbitmq is the RabbitMQ adapter of the broker ports, built on
// github.com/rabbitmq/amqp091-go: a self-healing connection (Conn), a
// Publisher with windowed publisher confirms, a Subscriber with per-key
// ordered concurrency, declarative topology and dead-letter retry chains.
//
// # Mapping
//
// A broker topic is a durable exchange (topic kind by default) and
// Message.Key is the routing key. A consumer group is a durable queue per
// (topic, group), named "<topic>.<group>" and bound to the exchange with
// "#", so every group receives every message and the members of a group
// (each Subscribe call) share the queue. Groups configures all of it.
// Subscriber.Setup declares a group's queue before anything is published,
// and so does Groups.Declare from the publishing side, with the same Groups
// the consumers use: messages published while no queue is bound are
// unroutable, and Publish reports them as errors matching ErrUnroutable and
// logs a WARN naming the exchange and routing key.
//
// Message.ID is the AMQP message-id; Time travels in the timestamp property
// (whole seconds, for other clients) and, with nanoseconds, in a
// steadfast-time header; the headers type, content-type, correlation-id,
// content-encoding, reply-to and app-id use their AMQP properties; other
// headers are string headers. Headers in the library's reserved namespace
// (broker.ReservedHeaderPrefix, "steadfast-") are escaped on the wire, so
// every message round-trips unchanged, and reserved headers the adapter did
// not write are not delivered. Broker-added headers appear on deliveries as strings:
// x-death as JSON (see Deaths), x-delivery-count, x-first-death-*.
//
// # Hostile and careless input
//
//   - Publish checks every message against AMQP's limits before anything
//     of the call is sent (names of at most MaxNameBytes, a UTF-8 topic, at
//     most MaxHeaders headers, properties that fit one frame) and refuses
//     the call with an error matching ErrProtocolLimit and
//     broker.ErrInvalidMessage: one bad message never tears down the shared
//     connection, and the outbox parks it at once.
//   - Every connection reads through a delivery guard (amqp091 closes the
//     connection on a header table it cannot decode, which any producer
//     can send): such a delivery is rejected to the queue's dead-letter
//     exchange with an ERROR log, and the subscriber goes on. The guard
//     cannot see inside amqps:// connections, whose TLS amqp091 runs above
//     it.
//   - Delivery.Attempt counts only what the broker itself recorded: trips
//     down the group's retry chain (from the routing key the chain's queues
//     set) and a quorum queue's x-delivery-count of a redelivery, in
//     saturating arithmetic. x-death and x-delivery-count headers a
//     producer wrote never count and never rename a message: Topic and Key
//     are the delivery's exchange and routing key, except for a message back
//     from the retry chain, whose topic is the subscription's and whose key
//     is the one RabbitMQ recorded in x-death when the group queue rejected
//     it (a raw producer that pre-seeds that x-death entry chooses it).
//   - A delivery without a message-id gets FallbackID, stable across
//     redeliveries, so deduplicating consumers handle it once.
//
// # Guarantees
//
//   - Publish returns nil only when the broker confirmed every message
//     (publisher confirms, persistent delivery, mandatory routing). An
//     unroutable message is an error matching ErrUnroutable, never a silent
//     drop. Messages not confirmed when the connection drops are sent again
//     after the reconnect, until the caller's ctx ends: a Publish in flight
//     during an outage either succeeds after the reconnect or returns an
//     error, and a message may be enqueued twice (consumers deduplicate on
//     Message.ID).
//   - Delivery is at least once with manual acks. A handler error retries
//     the delivery in process with a growing Delivery.Attempt, holding back
//     its key; MaxAttempts and Groups.Retry hand failures to the broker
//     (dead-letter exchange, retry chain, parking queue) instead.
//   - Per-key order: one active member per group (single-active-consumer
//     queues), and within it one handler at a time per key while different
//     keys run in parallel. Groups.Competing trades cross-member order for
//     throughput across processes. Messages that go through a retry chain
//     leave their key's order.
//   - Without handler errors or connection failures no message is handed to
//     a classic group queue twice: acks are sent before a stopping member
//     closes its channel, and deliveries it had not started go back to the
//     queue in order. After a connection failure, deliveries whose acks were
//     lost are redelivered with Redelivered set. A quorum queue may also
//     drop acks that arrive just before the channel closes (RabbitMQ issue
//     10327): the last messages a stopping member handled can then be
//     handed to the next member again, with Redelivered set.
//   - Conn re-dials with exponential backoff after a connection loss,
//     declares every topology declared through it again (conflicts are
//     logged and skipped), and only then hands out channels; subscribers
//     resume consuming and publishers resend. A broker that accepts
//     connections and drops them soon after is redialled with the same
//     backoff, not in a loop, and Close ends a reconnection under way at
//     once. Close waits at most Config.CloseTimeout (1s by default) for a
//     broker that does not answer, and so do Publisher.Close and a
//     stopping Subscribe call for their channels.
//   - Calls that take a ctx return when it ends, also while the broker does
//     not answer a request: amqp091's synchronous methods (opening a
//     channel, confirm.select, declarations, basic.qos, basic.consume) take
//     no context, and on a connection up at the TCP level whose broker went
//     silent they would wait until missed heartbeats end the connection,
//     1.5 × Config.Heartbeat later. A request given up on cannot be
//     cancelled: its channel is closed once the broker answers or the
//     connection ends, never used again, and a declaration given up on may
//     still take effect on the broker.
//
// # Observability
//
// Telemetry follows the library's rule. Conn, Publisher and Subscriber log
// through the *slog.Logger of Config (default slog.Default()). Metrics and
// spans go to the OpenTelemetry providers of Config (default: the global
// ones). A Publish call runs in a "publish <topic>" producer span whose
// trace context travels in the traceparent header of messages that have
// none; each handler call runs in a "process <topic>" consumer span
// parented by the message's traceparent.
//
// # Costs
//
// A Conn holds one TCP connection and one goroutine; a Publisher one AMQP
// channel and goroutine per pool slot (PublisherConfig.Channels); a
// Subscribe call one channel, one goroutine per key with deliveries in
// hand, and at most Subscription.Concurrency handlers at once. Opening a
// channel and each declaration cost a goroutine while the broker answers
// (so that ctx can end the wait); publishing on an open channel, to an
// exchange known to exist, costs none.
package rabbitmq
