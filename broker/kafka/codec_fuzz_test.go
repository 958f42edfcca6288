package kafka

import (
	"bytes"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/brokerimpl"
)

// FuzzFromRecord: a record from a producer we do not control (any key,
// value and headers, reserved names included, duplicates, empty values)
// decodes without panicking into a message with a non-empty ID and no
// adapter header left in its headers.
func FuzzFromRecord(f *testing.F) {
	f.Add([]byte("k"), []byte("v"), HeaderUUID, "short", "h", "v", int64(7))
	f.Add([]byte(nil), []byte(nil), HeaderID, "", broker.ReservedHeaderPrefix+"u-", "x", int64(-1))
	f.Add([]byte("k"), []byte("v"), broker.ReservedHeaderPrefix+"future", "\xff", HeaderUUID, strings.Repeat("u", 16), int64(0))
	f.Fuzz(func(t *testing.T, key, value []byte, h1, v1, h2, v2 string, offset int64) {
		r := &kgo.Record{Topic: "t", Key: key, Value: value, Offset: offset, Partition: 3, Timestamp: time.UnixMilli(offset),
			Headers: []kgo.RecordHeader{{Key: h1, Value: []byte(v1)}, {Key: h2, Value: []byte(v2)}}}
		for _, a := range []*textArena{nil, {}} {
			m := fromRecord(r, a)
			if m.ID == "" || m.Topic != "t" || m.Key != string(key) || !bytes.Equal(m.Payload, value) {
				t.Fatalf("fromRecord = %+v", m)
			}
			for k := range m.Headers {
				if k == HeaderID || k == HeaderUUID {
					t.Fatalf("adapter header %q delivered as a message header: %v", k, m.Headers)
				}
			}
		}
	})
}

// FuzzRecordRoundTrip: any message the adapter accepts comes back from its
// record exactly, whatever its header names (reserved ones included) and
// ID.
func FuzzRecordRoundTrip(f *testing.F) {
	f.Add("id", "k", []byte("v"), "h", "v", broker.ReservedHeaderPrefix+"x", "y")
	f.Add("", "", []byte(nil), broker.ReservedHeaderPrefix+"u-"+"z", "", HeaderUUID, "\x00")
	f.Add(broker.NewID(), "k", []byte("v"), HeaderID, "forged", "", "")
	f.Fuzz(func(t *testing.T, id, key string, value []byte, h1, v1, h2, v2 string) {
		m := broker.Message{ID: id, Topic: "t", Key: key, Payload: value, Headers: map[string]string{h1: v1, h2: v2},
			Time: time.UnixMilli(1_700_000_000_000)}
		if brokerimpl.ValidateBatch([]broker.Message{m}, 0) != nil {
			return
		}
		recs := toRecords([]broker.Message{m}, newIDGen(), nil)
		got := fromRecord(recs[0], nil)
		if id != "" && got.ID != id {
			t.Fatalf("ID %q came back as %q", id, got.ID)
		}
		if got.ID == "" || got.Key != key || !bytes.Equal(got.Payload, value) || !maps.Equal(got.Headers, m.Headers) || !got.Time.Equal(m.Time) {
			t.Fatalf("sent %+v, got %+v", m, got)
		}
	})
}
