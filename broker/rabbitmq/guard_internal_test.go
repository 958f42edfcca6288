package rabbitmq

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
)

// frame returns an AMQP frame of type typ on channel 1 with payload p.
func frame(typ byte, p []byte) []byte {
	f := []byte{typ, 0, 1}
	f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
	f = append(f, p...)
	return append(f, 0xce)
}

// deliveryStream returns the frames of n deliveries of a 1 KB message
// with a few headers, as a broker sends them.
func deliveryStream(n int, table []byte) []byte {
	method := make([]byte, 60) // basic.deliver with its fields; content is opaque here
	var b bytes.Buffer
	for range n {
		b.Write(frame(frameTypeMethod, method))
		b.Write(frame(frameTypeHeader, headerPayload(table, "01a2454f-d106-7c80-8c46-e2a7ba8b057a")))
		b.Write(frame(frameTypeBody, make([]byte, 1024)))
	}
	return b.Bytes()
}

func smallTable() []byte {
	var t []byte
	for _, kv := range [][2]string{{"steadfast-time", "12345678"}, {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {"seq", "7"}} {
		t = append(t, byte(len(kv[0])))
		t = append(t, kv[0]...)
		t = append(t, 'S')
		t = binary.BigEndian.AppendUint32(t, uint32(len(kv[1])))
		t = append(t, kv[1]...)
	}
	return t
}

// TestFrameGuard: frames pass through the guard unchanged, byte for byte,
// however the reads are cut; a content header with a table amqp091 would
// refuse comes out rewritten, with the frames around it intact.
func TestFrameGuard(t *testing.T) {
	in := deliveryStream(3, smallTable())
	for _, chunk := range []int{1, 7, 100, 1 << 16} {
		g := &frameGuard{r: bufio.NewReader(bytes.NewReader(in))}
		var out bytes.Buffer
		buf := make([]byte, chunk)
		for {
			n, err := g.Read(buf)
			out.Write(buf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(out.Bytes(), in) {
			t.Fatalf("reads of %d: stream changed", chunk)
		}
	}

	var many []byte
	for i := range guardMaxEntries + 1 {
		k := binary.BigEndian.AppendUint32(nil, uint32(i))
		many = append(many, byte(len(k)))
		many = append(many, k...)
		many = append(many, 'V')
	}
	bad := deliveryStream(1, many)
	good := deliveryStream(1, smallTable())
	g := &frameGuard{r: bufio.NewReader(bytes.NewReader(append(append(append([]byte(nil), good...), bad...), good...)))}
	out, err := io.ReadAll(g)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, good) || !bytes.HasSuffix(out, good) {
		t.Fatal("frames around the rewritten one changed")
	}
	mid := out[len(good) : len(out)-len(good)]
	if !bytes.Contains(mid, []byte(headerUndecodable)) || len(mid) >= len(bad) {
		t.Fatalf("undecodable header not rewritten (%d bytes, was %d)", len(mid), len(bad))
	}
	// Many duplicate names are one entry to amqp091: let through.
	var dups []byte
	for range guardMaxEntries + 10 {
		dups = append(dups, 1, 'k', 'V')
	}
	if _, ok := guardHeader(headerPayload(dups, "id")); !ok {
		t.Error("a table of one distinct name repeated was refused")
	}
}

// BenchmarkGuard compares reading a stream of 1 KB deliveries through the
// delivery guard with reading it directly, as amqp091 would without it.
func BenchmarkGuard(b *testing.B) {
	in := deliveryStream(1000, smallTable())
	buf := make([]byte, 4096)
	drain := func(b *testing.B, r io.Reader) {
		for {
			if _, err := r.Read(buf); err == io.EOF {
				return
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("1KB/raw", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			drain(b, bufio.NewReaderSize(bytes.NewReader(in), 64<<10))
		}
	})
	b.Run("1KB/steadfast", func(b *testing.B) {
		b.SetBytes(int64(len(in)))
		for b.Loop() {
			drain(b, &frameGuard{r: bufio.NewReaderSize(bytes.NewReader(in), 64<<10)})
		}
	})
}

// BenchmarkCheckLimits is the cost of the protocol-limit check Publish runs
// on each message (a 1 KB message with five headers), beside the cost of
// mapping it to an AMQP publishing, which Publish pays anyway.
func BenchmarkCheckLimits(b *testing.B) {
	m := []broker.Message{{ID: broker.NewID(), Topic: "orders", Key: "order-42", Payload: make([]byte, 1024),
		Headers: map[string]string{broker.HeaderType: "order.created", broker.HeaderContentType: "application/json",
			broker.HeaderTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "seq": "7", "tenant": "acme"}}}
	b.Run("1KB/raw", func(b *testing.B) {
		for b.Loop() {
			_ = toPublishing(m[0], 2)
		}
	})
	b.Run("1KB/steadfast", func(b *testing.B) {
		for b.Loop() {
			_ = toPublishing(m[0], 2)
			if err := checkLimits(m, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
