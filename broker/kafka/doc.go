// Package kafka is the Kafka adapter of the broker ports, built on franz-go.
//
// Publisher implements broker.Publisher with an idempotent producer and
// acks=all; Subscriber implements broker.Subscriber with consumer groups and
// the cooperative-sticky balancer; Pipeline runs exactly-once
// consume-transform-produce loops on Kafka transactions; Admin creates topics
// and reports consumer lag. Publisher and Subscriber pass the
// broker/brokertest conformance suite with ConsumerGroups, Persistent,
// PerKeyOrder and ExactlyOnce (no duplicates without handler errors or
// crashes).
//
// # Message mapping
//
//   - Topic is the Kafka topic, Key the record key (an empty Key is a null
//     key), Payload the record value, Time the record timestamp (Kafka keeps
//     milliseconds).
//   - Message.ID travels in a record header: a UUID in canonical lowercase
//     form (what broker.NewID and the Publisher generate) as its 16 bytes in
//     HeaderUUID, any other ID as text in HeaderID. Headers are record
//     headers; a header whose name starts with broker.ReservedHeaderPrefix
//     is escaped on the wire and restored on delivery, so the Headers map a
//     subscriber sees equals the one published, and a record header of
//     that namespace that the adapter did not write is not delivered.
//   - A record produced by another client, without either ID header, is
//     delivered with the ID "topic/partition/offset".
//   - A keyed record goes to KeyPartition(key, partitions), the partition
//     Kafka's Java client picks (murmur2), so producers in several languages
//     keep one key on one partition.
//
// # Delivery
//
// Subscribe is at least once and commits an offset only after the handlers
// of its message and of every earlier message of the partition returned nil.
// By default messages of one key run one at a time in order and different
// keys of one partition run in parallel (OrderPerKey), so a slow or failing
// message holds up its key, not its partition; OrderPerPartition restores
// the classic one-at-a-time partition consumer. A failing handler is retried
// in place after a backoff with Delivery.Attempt growing, never spinning;
// middleware decides when to give up (dead-letter queues build on this).
// Rebalances and shutdown drain running handlers and commit before a
// partition is released, so without failures no message reaches a group
// twice. After a crash, the messages handled since the last periodic commit
// (CommitInterval) are delivered again, with Attempt 1; consumers deduplicate
// on Message.ID.
//
// A delivered message's Key, ID and Headers are its own copies; its Payload
// points into the bytes fetched with its record batch and is never written
// again, so a handler may keep it. Keeping a small Payload keeps its whole
// batch's bytes in memory, though: copy it if you keep many for long.
//
// Telemetry follows the library's rule: Config.Logger (default
// slog.Default()) receives the adapter's logs and franz-go's warnings;
// Config.MeterProvider (default: the OpenTelemetry global one) receives the
// LagMetric gauge; Config.TracerProvider (default: the global one) receives
// a "publish <topic>" producer span per Publish call, whose trace context
// travels in each record's traceparent header, and a "process <topic>"
// consumer span per handler or Transform call, parented by it.
//
// # Connecting
//
//	brokers := kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS"))
//	pub, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: brokers}})
//	...
//	sub, err := kafka.NewSubscriber(kafka.SubscriberConfig{Config: kafka.Config{Brokers: brokers}})
//
// TLS and SASL are franz-go options passed in Config.Options.
package kafka
