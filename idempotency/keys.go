package idempotency

import (
	"fmt"
	"strconv"

	"github.com/steadfast-go/steadfast/broker"
)

// KeyFunc derives the deduplication key of a delivery. Two deliveries with
// the same key (in one consumer's scope) are the same piece of work: the
// second is skipped. An error makes the delivery fail without running the
// handler; it should wrap ErrNoKey when the delivery simply has no key.
//
// A business-key strategy is any KeyFunc, e.g. the order ID parsed from the
// payload, so that two different messages asking for the same effect are
// deduplicated too.
type KeyFunc func(d broker.Delivery) (string, error)

// MessageID keys a delivery by its Message.ID, which is stable across
// producer retries and redeliveries. It is the default strategy.
func MessageID(d broker.Delivery) (string, error) {
	if d.ID == "" {
		return "", fmt.Errorf("%w: message has no ID", ErrNoKey)
	}
	return d.ID, nil
}

// KafkaOffset keys a delivery by "topic:partition:offset": the position of
// the record in the log. It deduplicates redeliveries of one record (after a
// crash before the offset commit, or a rebalance), not a message published
// twice, which lands at two offsets; prefer MessageID unless the producer
// sets no stable IDs. Deliveries without a partition or offset fail with
// ErrNoKey.
func KafkaOffset(d broker.Delivery) (string, error) {
	if d.Partition < 0 || d.Offset < 0 {
		return "", fmt.Errorf("%w: delivery of topic %q has no Kafka partition and offset", ErrNoKey, d.Topic)
	}
	b := make([]byte, 0, len(d.Topic)+24)
	b = append(b, d.Topic...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(d.Partition), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, d.Offset, 10)
	return string(b), nil
}

// Header keys a delivery by the value of header name, for producers that
// carry their own idempotency key. A delivery without the header, or with an
// empty value, fails with ErrNoKey.
func Header(name string) KeyFunc {
	return func(d broker.Delivery) (string, error) {
		v := d.Headers[name]
		if v == "" {
			return "", fmt.Errorf("%w: message %q has no %q header", ErrNoKey, d.ID, name)
		}
		return v, nil
	}
}
