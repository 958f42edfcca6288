package kafkadlq

import (
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// FuzzMarkers: records of a dead-letter topic, whatever their key, value
// and headers, never panic the Inspector's decoding; a dead letter is
// marked only by a later marker record naming its offset and its record's
// digest, and a record with a key or a value is never a marker.
func FuzzMarkers(f *testing.F) {
	f.Add([]byte(nil), []byte(nil), "purged", "0", "", "", false)
	f.Add([]byte(nil), []byte(nil), "replayed", "1", "id", "00", true)
	f.Add([]byte("k"), []byte("v"), "purged", "0", "id", "", true)
	f.Add([]byte(nil), []byte(nil), "", "-5", "", "zz", false)
	f.Fuzz(func(t *testing.T, key, value []byte, what, off, id, dig string, useDigest bool) {
		s := &snapshot{parts: map[int32][]entry{}, resolved: map[int32]map[int64]bool{}}
		dead := &kgo.Record{Partition: 0, Offset: 0, Value: []byte("dead letter"), Timestamp: time.Unix(1, 0)}
		s.parts[0] = append(s.parts[0], s.decode(dead))
		if useDigest {
			dig = digest(dead)
		}
		hs := []kgo.RecordHeader{{Key: HeaderMarker, Value: []byte(what)}, {Key: HeaderMarkerOffset, Value: []byte(off)},
			{Key: HeaderMarkerID, Value: []byte(id)}, {Key: HeaderMarkerDigest, Value: []byte(dig)}}
		rec := &kgo.Record{Partition: 0, Offset: 1, Key: key, Value: value, Headers: hs}
		e := s.decode(rec)
		s.parts[0] = append(s.parts[0], e)
		s.resolve()
		if e.marker != (len(key) == 0 && len(value) == 0) {
			t.Fatalf("record with key %q value %q: marker %v", key, value, e.marker)
		}
		marked := s.resolved[0][0]
		want := e.marker && off == "0" && dig == digest(dead) && (id == "" || id == s.parts[0][0].dl.ID())
		if n, err := strconv.ParseInt(off, 10, 64); err == nil && n == 0 && off != "0" {
			want = e.marker && dig == digest(dead) && (id == "" || id == s.parts[0][0].dl.ID())
		}
		if marked != want {
			t.Fatalf("dead letter marked %v, want %v (marker %v, offset %q, id %q, digest %q)", marked, want, e.marker, off, id, dig)
		}
		if s.resolved[0][1] {
			t.Fatal("a marker marked itself")
		}
		if p, o, ok := parsePosition(position(7, int64(len(off)))); !ok || p != 7 || o != int64(len(off)) {
			t.Fatalf("position round trip: %d %d %v", p, o, ok)
		}
		_, _, _ = parsePosition(off + "/" + id)
	})
}
