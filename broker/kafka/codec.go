package kafka

import (
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
)

// Record headers the adapter reserves. Message.ID travels in HeaderID. A
// message header whose name starts with ReservedHeaderPrefix is escaped on
// the wire (its name prefixed with ReservedHeaderPrefix+"u-") and restored
// by the subscriber, so every Headers map round-trips unchanged.
const (
	ReservedHeaderPrefix = "steadfast-"
	HeaderID             = ReservedHeaderPrefix + "id"
	escapedHeaderPrefix  = ReservedHeaderPrefix + "u-"
)

// toRecord maps a normalized message to a record: Topic, Key (empty means no
// key), Payload as the value, Time as the record timestamp (milliseconds),
// ID and Headers as record headers.
func toRecord(m *broker.Message) *kgo.Record {
	// One allocation holds the record and, for the common message without
	// headers, its only header; another holds the key and ID bytes.
	x := &struct {
		r kgo.Record
		h [1]kgo.RecordHeader
	}{}
	r := &x.r
	r.Topic, r.Value, r.Timestamp = m.Topic, m.Payload, m.Time
	b := make([]byte, len(m.Key)+len(m.ID))
	copy(b[copy(b, m.Key):], m.ID)
	if m.Key != "" {
		r.Key = b[:len(m.Key):len(m.Key)]
	}
	id := kgo.RecordHeader{Key: HeaderID, Value: b[len(m.Key):]}
	if len(m.Headers) == 0 {
		x.h[0] = id
		r.Headers = x.h[:]
		return r
	}
	hs := make([]kgo.RecordHeader, 0, 1+len(m.Headers))
	hs = append(hs, id)
	for k, v := range m.Headers {
		if strings.HasPrefix(k, ReservedHeaderPrefix) {
			k = escapedHeaderPrefix + k
		}
		hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	r.Headers = hs
	return r
}

// fromRecord maps a consumed record back to a message. A record without the
// ID header (written by another producer) gets the stable ID
// "topic/partition/offset", so deduplication by ID still works.
func fromRecord(r *kgo.Record) broker.Message {
	m := broker.Message{
		Topic:   r.Topic,
		Payload: r.Value,
		Time:    r.Timestamp,
	}
	if len(r.Key) > 0 {
		m.Key = string(r.Key)
	}
	for _, h := range r.Headers {
		if strings.HasPrefix(h.Key, ReservedHeaderPrefix) {
			switch {
			case h.Key == HeaderID:
				m.ID = string(h.Value)
				continue
			case strings.HasPrefix(h.Key, escapedHeaderPrefix):
				h.Key = h.Key[len(escapedHeaderPrefix):]
			default:
				continue // reserved for future use
			}
		}
		if m.Headers == nil {
			m.Headers = make(map[string]string, len(r.Headers))
		}
		m.Headers[h.Key] = string(h.Value)
	}
	if m.ID == "" {
		m.ID = r.Topic + "/" + strconv.FormatInt(int64(r.Partition), 10) + "/" + strconv.FormatInt(r.Offset, 10)
	}
	return m
}
