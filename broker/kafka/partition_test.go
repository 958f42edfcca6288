package kafka

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Vectors from Kafka's UtilsTest.testMurmur2 (Java's murmur2 as a signed
// int). The Java client's default partitioner places a keyed record on
// Utils.toPositive(murmur2(key)) % numPartitions, toPositive being x &
// 0x7fffffff.
var javaMurmur2 = []struct {
	key  string
	hash int32
}{
	{"21", -973932308},
	{"foobar", -790332482},
	{"a-little-bit-long-string", -985981536},
	{"a-little-bit-longer-string", -1486304829},
	{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
	{"abc", 479470107},
}

func TestKeyPartitionMatchesJava(t *testing.T) {
	t.Parallel()
	for _, v := range javaMurmur2 {
		if got := int32(murmur2([]byte(v.key))); got != v.hash {
			t.Errorf("murmur2(%q) = %d, want %d", v.key, got, v.hash)
		}
		for _, n := range []int{1, 3, 7, 10, 64} {
			want := int32(int64(uint32(v.hash)&0x7fffffff) % int64(n))
			if got := KeyPartition(v.key, n); got != want {
				t.Errorf("KeyPartition(%q, %d) = %d, want %d", v.key, n, got, want)
			}
		}
	}
	if KeyPartition("", 3) != -1 || KeyPartition("k", 0) != -1 {
		t.Errorf("KeyPartition of an empty key or no partitions must be -1")
	}
}

// TestPublisherPlacesKeysLikeJava: every keyed message lands on
// KeyPartition(key, partitions), the partition the Java client picks, and
// Key, ID, Headers and Time round-trip, including a header that uses the
// reserved prefix.
func TestPublisherPlacesKeysLikeJava(t *testing.T) {
	t.Parallel()
	brokers := testenv.Kafka(t)
	k := newKit(t, brokers, nil)
	topic := testenv.Name(t, "t")
	const parts = 7
	k.createTopic(t, topic, parts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var msgs []broker.Message
	for _, v := range javaMurmur2 {
		m := broker.NewMessage(topic, []byte(v.key))
		m.Key = v.key
		msgs = append(msgs, m)
	}
	for i := range 50 {
		m := broker.NewMessage(topic, nil)
		m.Key = fmt.Sprintf("order-%d", i)
		m.Headers = map[string]string{"steadfast-id": "user value", broker.ReservedHeaderPrefix + "u-x": "nested", "plain": ""}
		m.Time = time.UnixMilli(1700000000123 + int64(i))
		msgs = append(msgs, m)
	}
	if err := k.pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got = map[string]broker.Delivery{}
	)
	all := make(chan struct{})
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- k.sub.Subscribe(sctx, broker.Subscription{Topic: topic, Group: testenv.Name(t, "g")}, func(_ context.Context, d broker.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			got[d.ID] = d
			if len(got) == len(msgs) {
				close(all)
			}
			return nil
		})
	}()
	select {
	case <-all:
	case <-ctx.Done():
		t.Fatalf("received %d of %d", len(got), len(msgs))
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		d := got[m.ID]
		if want := KeyPartition(m.Key, parts); d.Partition != want {
			t.Errorf("key %q on partition %d, want %d", m.Key, d.Partition, want)
		}
		if d.Key != m.Key || !maps.Equal(d.Headers, m.Headers) || !d.Time.Equal(m.Time.Truncate(time.Millisecond)) {
			t.Errorf("message %s: got key %q headers %v time %v; want %q %v %v", m.ID, d.Key, d.Headers, d.Time, m.Key, m.Headers, m.Time)
		}
	}
}

// TestForeignRecord: a record written without the adapter (no ID header)
// gets the stable ID topic/partition/offset and no headers.
func TestForeignRecord(t *testing.T) {
	t.Parallel()
	m := fromRecord(&kgo.Record{Topic: "t", Partition: 3, Offset: 42, Key: []byte("k"), Value: []byte("v"),
		Headers: []kgo.RecordHeader{{Key: broker.ReservedHeaderPrefix + "future", Value: []byte("x")}}}, nil)
	if m.ID != "t/3/42" || m.Key != "k" || string(m.Payload) != "v" || m.Headers != nil {
		t.Errorf("foreign record decoded as %+v", m)
	}
}

func TestIDGen(t *testing.T) {
	t.Parallel()
	g := newIDGen()
	seen := map[string]bool{}
	var last string
	for range 20 {
		buf := make([]byte, 1000*uuidLen)
		g.fill(buf)
		for i := range 1000 {
			id := formatUUID(buf[i*uuidLen:])
			u, err := uuid.Parse(id)
			if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 || u.String() != id {
				t.Fatalf("id %q is not a canonical UUIDv7: %v", id, err)
			}
			if seen[id] || id <= last {
				t.Fatalf("id %q repeats or does not increase (previous %q)", id, last)
			}
			seen[id], last = true, id
		}
	}
	if d := time.Since(time.Unix(uuid.Must(uuid.Parse(last)).Time().UnixTime())); d > time.Minute || d < -time.Minute {
		t.Errorf("id time is %v away from now", d)
	}
}

// TestIDEncoding: a canonical lowercase UUID travels as 16 bytes in
// HeaderUUID, any other ID as text in HeaderID, and both come back
// unchanged; a user header named like a reserved one stays the user's.
func TestIDEncoding(t *testing.T) {
	t.Parallel()
	ids := newIDGen()
	cases := []struct {
		id, header string
		wireLen    int
	}{
		{"", HeaderUUID, 16},
		{"0190a8f2-4c1b-7d3e-8f00-123456789abc", HeaderUUID, 16},
		{"0190A8F2-4C1B-7D3E-8F00-123456789ABC", HeaderID, 36}, // upper case would not round-trip as binary
		{"0190a8f2-4c1b-7d3e-8f00-123456789abg", HeaderID, 36},
		{"0190a8f2x4c1b-7d3e-8f00-123456789abc", HeaderID, 36},
		{"order-0000000001", HeaderID, 16},
		{"t/3/42", HeaderID, 6},
	}
	msgs := make([]broker.Message, len(cases))
	for i, c := range cases {
		msgs[i] = broker.Message{ID: c.id, Topic: "t", Key: fmt.Sprint("k", i), Payload: []byte{byte(i)},
			Headers: map[string]string{HeaderUUID: "user"}}
	}
	msgs[1].Headers = nil
	recs := toRecords(msgs, ids, nil)
	for i, c := range cases {
		r := recs[i]
		if h := r.Headers[0]; h.Key != c.header || len(h.Value) != c.wireLen {
			t.Errorf("id %q: first header %q with %d bytes, want %q with %d", c.id, h.Key, len(h.Value), c.header, c.wireLen)
		}
		m := fromRecord(r, &textArena{})
		want := c.id
		if want == "" {
			want = recordID(r)
			if u, err := uuid.Parse(want); err != nil || u.Version() != 7 {
				t.Errorf("generated id %q is not a UUIDv7: %v", want, err)
			}
		}
		if m.ID != want || m.ID != recordID(r) {
			t.Errorf("id %q came back as %q (recordID %q)", want, m.ID, recordID(r))
		}
		if m.Key != msgs[i].Key || string(m.Payload) != string(msgs[i].Payload) || !maps.Equal(m.Headers, msgs[i].Headers) {
			t.Errorf("message %d came back as %+v", i, m)
		}
	}
	// A corrupt binary ID is no ID: the record gets its offset-based one.
	bad := fromRecord(&kgo.Record{Topic: "t", Partition: 1, Offset: 9, Headers: []kgo.RecordHeader{{Key: HeaderUUID, Value: []byte("short")}}}, nil)
	if bad.ID != "t/1/9" {
		t.Errorf("corrupt binary id decoded as %q", bad.ID)
	}
}

// TestTextArena: strings cut from shared chunks keep their bytes while later
// strings fill the chunk and new chunks start; long strings stand alone.
func TestTextArena(t *testing.T) {
	t.Parallel()
	var a textArena
	var want, got []string
	for i := range 5000 {
		s := strings.Repeat(string(rune('a'+i%26)), 1+i%(arenaChunk/8))
		want = append(want, s)
		got = append(got, a.string([]byte(s)))
	}
	u := []byte{0x01, 0x90, 0xa8, 0xf2, 0x4c, 0x1b, 0x7d, 0x3e, 0x8f, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}
	id := a.uuid(u)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("string %d changed: %q, want %q", i, got[i], want[i])
		}
	}
	if id != "0190a8f2-4c1b-7d3e-8f00-123456789abc" || id != formatUUID(u) {
		t.Errorf("uuid text %q", id)
	}
	if s := (*textArena)(nil).string([]byte("x")); s != "x" {
		t.Errorf("nil arena gave %q", s)
	}
}
