package kafka

import (
	"context"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Record headers of the adapter, in the library's reserved namespace
// (broker.ReservedHeaderPrefix). Message.ID travels in HeaderUUID when it is
// a UUID in canonical lowercase text form (as broker.NewID and the
// Publisher make them): the header value is then the UUID's 16 bytes (RFC
// 9562 binary layout), 20 bytes shorter than the text, and bytes a batch
// compressor recognizes as incompressible. Any other ID travels as text in
// HeaderID. A message header whose name starts with the reserved prefix is
// escaped on the wire and restored by the subscriber, so every Headers map
// round-trips unchanged; other reserved record headers are not delivered.
const (
	HeaderID   = broker.ReservedHeaderPrefix + "id"
	HeaderUUID = broker.ReservedHeaderPrefix + "uuid"
)

// recordSlot holds a record and, for the common message without headers, its
// only header, so toRecords allocates all of a batch's records at once.
type recordSlot struct {
	r kgo.Record
	h [1]kgo.RecordHeader
}

// traceHeaders returns the record headers of ctx's trace context
// (telemetry.TraceHeaders), shared by every record of a call, or nil.
func traceHeaders(ctx context.Context) []kgo.RecordHeader {
	th := telemetry.TraceHeaders(ctx, nil)
	if len(th) == 0 {
		return nil
	}
	hs := make([]kgo.RecordHeader, 0, len(th))
	for k, v := range th {
		hs = append(hs, kgo.RecordHeader{Key: k, Value: []byte(v)})
	}
	return hs
}

// toRecords maps msgs, which brokerimpl.ValidateBatch accepted, to records
// in one pass, without copying the messages: Topic, Key (empty means no
// key), Payload as the value, Time as the record timestamp (milliseconds; a
// zero Time becomes now), ID and Headers as record headers, and the trace
// headers th on every message without a traceparent of its own. The ID
// header always comes first; an empty ID is filled from ids, exactly where
// brokerimpl.Normalize would fill one. All records, keys and IDs of the
// batch share three allocations.
func toRecords(msgs []broker.Message, ids *idGen, th []kgo.RecordHeader) []*kgo.Record {
	if len(msgs) == 0 {
		return nil
	}
	// One buffer holds every key and ID of the batch, new IDs at its end.
	size, missing := 0, 0
	for i := range msgs {
		size += len(msgs[i].Key) + len(msgs[i].ID)
		if msgs[i].ID == "" {
			missing++
		}
	}
	buf := make([]byte, size+missing*uuidLen)
	gen := buf[size:]
	ids.fill(gen)
	slots := make([]recordSlot, len(msgs))
	recs := make([]*kgo.Record, len(msgs))
	now := time.Now()
	for i := range msgs {
		m, x := &msgs[i], &slots[i]
		r := &x.r
		r.Topic, r.Value, r.Timestamp = m.Topic, m.Payload, m.Time
		if r.Timestamp.IsZero() {
			r.Timestamp = now
		}
		if m.Key != "" {
			r.Key = buf[:len(m.Key):len(m.Key)]
			buf = buf[copy(buf, m.Key):]
		}
		id := kgo.RecordHeader{Key: HeaderUUID}
		switch {
		case m.ID == "":
			id.Value, gen = gen[:uuidLen:uuidLen], gen[uuidLen:]
		case parseUUID(buf, m.ID):
			id.Value, buf = buf[:uuidLen:uuidLen], buf[len(m.ID):]
		default:
			id.Key = HeaderID
			id.Value = buf[:len(m.ID):len(m.ID)]
			buf = buf[copy(buf, m.ID):]
		}
		x.h[0] = id
		r.Headers = x.h[:]
		trace := th
		if trace != nil && m.Headers[broker.HeaderTraceparent] != "" {
			trace = nil
		}
		if len(m.Headers) > 0 || trace != nil {
			r.Headers = make([]kgo.RecordHeader, 1, 1+len(m.Headers)+len(trace))
			r.Headers[0] = x.h[0]
			for k, v := range m.Headers {
				r.Headers = append(r.Headers, kgo.RecordHeader{Key: brokerimpl.WireHeader(k), Value: []byte(v)})
			}
			for _, h := range trace {
				if _, own := m.Headers[h.Key]; !own {
					r.Headers = append(r.Headers, h)
				}
			}
		}
		recs[i] = r
	}
	return recs
}

// recordID is the message ID toRecords put in r.
func recordID(r *kgo.Record) string {
	if h := r.Headers[0]; h.Key == HeaderUUID {
		return formatUUID(h.Value)
	}
	return string(r.Headers[0].Value)
}

// fromRecord maps a consumed record back to a message. A record without an
// ID header (written by another producer) gets the stable ID
// "topic/partition/offset", so deduplication by ID still works. The key and
// ID strings are cut from a (nil means allocate each).
func fromRecord(r *kgo.Record, a *textArena) broker.Message {
	m := broker.Message{
		Topic:   r.Topic,
		Payload: r.Value,
		Time:    r.Timestamp,
	}
	if len(r.Key) > 0 {
		m.Key = a.string(r.Key)
	}
	for _, h := range r.Headers {
		if strings.HasPrefix(h.Key, broker.ReservedHeaderPrefix) {
			switch h.Key {
			case HeaderUUID:
				if len(h.Value) == uuidLen {
					m.ID = a.uuid(h.Value)
				}
				continue
			case HeaderID:
				m.ID = a.string(h.Value)
				continue
			}
			var ok bool
			if h.Key, ok = brokerimpl.MessageHeader(h.Key); !ok {
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

// textArena hands out strings cut from shared chunks, so decoding the keys
// and IDs of a poll costs an allocation per chunk instead of two per record.
// Bytes of a chunk are never written again once a string was cut from them.
// A string kept by a handler keeps its chunk (at most arenaChunk bytes)
// alive, not the fetch buffer it was copied from. A textArena is not safe
// for concurrent use; a nil *textArena allocates every string.
type textArena struct{ buf []byte }

// arenaChunk is the size of one chunk; strings above arenaChunk/16 bytes get
// their own allocation.
const arenaChunk = 8 << 10

// alloc returns n bytes to fill; n > 0.
func (a *textArena) alloc(n int) []byte {
	if a == nil || n > arenaChunk/16 {
		return make([]byte, n)
	}
	if cap(a.buf)-len(a.buf) < n {
		a.buf = make([]byte, 0, arenaChunk)
	}
	at := len(a.buf)
	a.buf = a.buf[:at+n]
	return a.buf[at : at+n : at+n]
}

// string returns b as a string.
func (a *textArena) string(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	d := a.alloc(len(b))
	copy(d, b)
	return unsafe.String(&d[0], len(d))
}

// uuid returns the canonical text form of the binary UUID u.
func (a *textArena) uuid(u []byte) string {
	d := a.alloc(uuidTextLen)
	putUUID(d, u)
	return unsafe.String(&d[0], len(d))
}
