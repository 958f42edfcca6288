// Package dlq bounds retries of failing messages and moves the ones that
// keep failing to a dead-letter destination, where operators list, replay
// and purge them.
//
// # Retry policy and classification
//
// A Policy bounds the attempts a message gets (MaxAttempts) and the waits
// between them (exponential backoff with jitter and a cap). A Classifier
// decides what a handler error means: Permanent(err) marks errors retrying
// cannot fix (a payload that does not decode, a failed validation), which
// go to the dead-letter destination at once; every other error is
// transient and retried, unless a custom Classifier, using errors.Is and
// errors.As, says otherwise.
//
// # Middleware and Consumer
//
// New returns a Consumer whose Middleware wraps a broker.Handler, and whose
// Subscribe runs a handler on a broker.Subscriber with that middleware.
// Where a failed message waits for its next attempt is Config.Retries, the
// explicit choice between per-key order and non-blocking retries:
//
//   - RetryInProcess (default): inside the handler call, blocking the
//     message's key; order is kept.
//   - RetryRedeliver: the broker adapter redelivers it; in place for Kafka
//     and the memory broker (blocking), through the TTL/dead-letter-exchange
//     retry chain for RabbitMQ with rabbitmq.Groups.Retry (non-blocking;
//     rabbitdlq.RetryChain builds the chain from a Policy).
//   - RetryTopics: on retry topics ("orders.billing.retry.1", ".retry.2",
//     ...), each consumed by a retry consumer that waits until the message
//     is due; non-blocking.
//
// After the last attempt, or at once for a permanent failure, the message
// is published to its dead-letter destination (by default
// "<topic>.<group>.dlq") with its payload and headers unchanged and an
// Envelope added in headers (original topic, key, partition and offset or
// queue, message ID, error text and class, attempts, first and last failure
// time, consumer group and handler name); only then is the original
// acknowledged. If that publish fails the original is not acknowledged and
// comes back: nothing is lost, and a poison message never blocks a
// partition or queue for good.
//
// # Operations
//
// Packages kafkadlq and rabbitdlq wire the Consumer to the broker
// adapters and create the retry and dead-letter destinations; package
// dlqtest is the conformance suite both pass.
//
// An Inspector lists dead letters with their envelopes, replays selected
// ones (by ID, failure time range, or all) to their original topic with
// HeaderReplayedAt and HeaderReplays set and the envelope removed (so
// attempts count from 1 again), and purges them. A replay goes to the
// original topic, so every consumer group of that topic receives it again,
// with its original ID: groups that had handled it deduplicate on the ID
// (see package idempotency), or replay to a topic of the failing group's
// own with ReplayOptions.Topic. Package kafkadlq and
// rabbitdlq implement it; package dlqcli (the steadfast-dlq command,
// dlq/cmd/steadfast-dlq) exposes list, peek, replay and purge for both
// brokers.
//
// # Hostile input
//
// Envelope headers are honoured only where the Consumer itself wrote them:
// on its retry topics, and even there they never rename a message (its ID
// and key are the delivery's, its topic and group the subscription's) and
// the attempt count is clamped to the policy's range. On a main topic they
// are a producer's forgery and are stripped unread, so a producer can
// neither skip retries nor choose the dead-letter destination. A dead
// letter always fits the publisher's size limit: the error text is cut,
// then the payload (and if need be the original headers) left out, which
// the envelope records (Envelope.PayloadOmitted); such a dead letter cannot
// be replayed (ErrIncomplete), and a message is never retried forever for
// its size.
//
// # Logs and metrics
//
// By the library's telemetry rule: logs go to Config.Logger (default
// slog.Default()); metrics through the OpenTelemetry API
// (Config.MeterProvider, default the global provider):
// steadfast.dlq.dead_lettered (by original topic, group, error
// class and reason "exhausted" or "permanent"), steadfast.dlq.retried,
// steadfast.dlq.dead_letter_failures, and from inspectors
// steadfast.dlq.replayed and steadfast.dlq.purged.
package dlq
