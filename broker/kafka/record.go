package kafka

import (
	"github.com/steadfast-go/steadfast/broker"
	"github.com/twmb/franz-go/pkg/kgo"
)

// MessageFromRecord maps a record back to the message that was published,
// exactly as the Subscriber does: the ID from HeaderUUID or HeaderID (or
// "topic/partition/offset" for records of other producers), escaped header
// names restored, other reserved headers dropped. Tools that read topics with
// their own franz-go client, such as dead-letter inspectors, use it so they
// decode the wire format the same way.
func MessageFromRecord(r *kgo.Record) broker.Message { return fromRecord(r, nil) }
