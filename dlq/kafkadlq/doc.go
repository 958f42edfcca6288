// Package kafkadlq runs the dlq retry and dead-letter patterns on Kafka:
// a Consumer that wires dlq.Consumer to the kafka adapter (with retry
// topics consumed per partition, and topic creation), and an Inspector
// that lists, replays and purges a dead-letter topic.
//
// # Topics
//
// For a topic "orders" consumed by group "billing" the dead-letter topic is
// "orders.billing.dlq" and, with dlq.RetryTopics, the retry topics are
// "orders.billing.retry.1" up to "orders.billing.retry.N" (N =
// MaxAttempts-1 by default). Consumer.Subscribe creates the missing ones
// (Config.TopicSpec, by default with the main topic's partition count)
// before it consumes, or, with Config.NoCreateTopics or when creation is
// refused, fails at once naming them; Consumer.CreateTopics creates them
// ahead of time. Dead letters keep the original key, so the dead letters
// of one key stay in order in one partition.
//
// # Hostile input
//
// Envelope headers on a main-topic message are a producer's forgery and
// are stripped unread (see dlq.Consumer); on a retry topic they never
// rename the message. The Inspector's marker records name the digest of
// the dead letter they mark, so no message and no record written by
// another client hides or removes a dead letter it does not know (see
// HeaderMarker).
//
// # Ordering
//
// dlq.Config.Retries is the choice: dlq.RetryRedeliver (or
// dlq.RetryInProcess) keeps per-key order by retrying a failed message in
// place, holding its key back; dlq.RetryTopics never holds a key back but
// lets later messages of the key overtake a failed one. With
// RetryRedeliver, NewConsumer gives the subscriber the policy's backoff, so
// the wait happens in the adapter's timer rather than in a sleeping
// handler; prefer it over RetryInProcess on Kafka. A Kafka message whose
// partition moves to another member (a rebalance or a crash) starts again at
// attempt 1 there, because Kafka keeps no delivery count.
package kafkadlq
