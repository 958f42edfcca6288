package rabbitmq

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// The delivery guard.
//
// amqp091 refuses to decode a content header whose header table holds more
// than 8,192 entries (or nests deeper than 32 levels, or holds a field type
// it does not know), and treats that as a fatal connection error. RabbitMQ
// accepts and confirms such a message from any producer, so without a guard
// a single one kills every consumer connection it is delivered to, again
// after every reconnect, and blocks its queue for good.
//
// Every connection a Conn dials therefore reads the broker's frames
// through a guard. It passes method, body and heartbeat frames through as
// they are, checks each content header frame against amqp091's limits, and
// rewrites a header it cannot let through: its header table is replaced by
// one entry, steadfast-undecodable, saying why, and every other property
// (message-id, timestamp, type, ...) is kept when it can be located. The
// delivery then reaches the Subscriber, which rejects it to the queue's
// dead-letter exchange with an ERROR log and goes on with the next one.
//
// Costs: one pass over the bytes of each content header frame (the
// properties; never the payload), no allocation for frames that pass.

// The limits amqp091 (v1.16) applies when it reads a field table or array.
const (
	guardMaxEntries = 8192
	guardMaxDepth   = 32
)

// errUndecodable is what checkTable returns for a table amqp091 would
// refuse.
var errUndecodable = errors.New("undecodable")

// guardConn is a net.Conn whose reads go through a frameGuard.
type guardConn struct {
	net.Conn
	g *frameGuard
}

func newGuardConn(c net.Conn) *guardConn {
	return &guardConn{Conn: c, g: &frameGuard{r: bufio.NewReaderSize(c, 64<<10)}}
}

func (c *guardConn) Read(p []byte) (int, error) { return c.g.Read(p) }

// frameGuard reads AMQP frames from r and hands them on, rewriting the
// content header frames amqp091 could not decode.
type frameGuard struct {
	r *bufio.Reader
	// out holds bytes ready to be read; pass counts the bytes after them
	// that are copied straight from r.
	out     []byte
	outBuf  []byte
	pass    int64
	raw     bool // the stream is not (or no longer) made of frames: copy it
	scratch []byte
}

func (g *frameGuard) Read(p []byte) (int, error) {
	for {
		if len(g.out) > 0 {
			n := copy(p, g.out)
			g.out = g.out[n:]
			return n, nil
		}
		if g.raw {
			return g.r.Read(p)
		}
		if g.pass > 0 {
			n, err := g.r.Read(p[:min(int64(len(p)), g.pass)])
			g.pass -= int64(n)
			return n, err
		}
		if err := g.next(); err != nil {
			return 0, err
		}
	}
}

// AMQP frame types.
const (
	frameTypeMethod    = 1
	frameTypeHeader    = 2
	frameTypeBody      = 3
	frameTypeHeartbeat = 8
)

// guardMaxHeaderFrame bounds the content header frames the guard buffers
// to check; larger ones (beyond any frame_max a broker negotiates) are
// passed on for amqp091 to refuse.
const guardMaxHeaderFrame = 16 << 20

// next reads the start of the next frame and prepares its bytes.
func (g *frameGuard) next() error {
	hdr, err := g.r.Peek(7)
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			g.raw = true // let the reader see the truncated frame
			return nil
		}
		return err
	}
	typ := hdr[0]
	size := binary.BigEndian.Uint32(hdr[3:7])
	switch typ {
	case frameTypeMethod, frameTypeBody, frameTypeHeartbeat:
	case frameTypeHeader:
		if size <= guardMaxHeaderFrame {
			return g.header(size)
		}
	default:
		// Not a frame: the broker's protocol header refusing our version,
		// or garbage amqp091 will refuse. Stop interpreting.
		g.raw = true
		return nil
	}
	// 7 header bytes, the payload and the frame-end octet.
	g.pass = 7 + int64(size) + 1
	return nil
}

// header reads a whole content header frame, checks it and queues it,
// rewritten when amqp091 could not decode it.
func (g *frameGuard) header(size uint32) error {
	n := 7 + int(size) + 1
	if cap(g.scratch) < n {
		g.scratch = make([]byte, n)
	}
	frame := g.scratch[:n]
	if _, err := io.ReadFull(g.r, frame); err != nil {
		g.out = append(g.outBuf[:0], frame...)
		g.raw = true
		return nil
	}
	payload := frame[7 : 7+size]
	if rewritten, ok := guardHeader(payload); !ok {
		g.outBuf = append(g.outBuf[:0], frame[:7]...)
		binary.BigEndian.PutUint32(g.outBuf[3:7], uint32(len(rewritten)))
		g.outBuf = append(g.outBuf, rewritten...)
		g.outBuf = append(g.outBuf, frame[n-1])
		g.out = g.outBuf
		return nil
	}
	g.out = frame
	return nil
}

// Basic class property flags (AMQP 0-9-1), in wire order.
const (
	propContentType     = 0x8000
	propContentEncoding = 0x4000
	propHeaders         = 0x2000
)

// guardHeader checks the payload of a content header frame. It returns
// true when amqp091 can decode it, and otherwise a replacement payload
// whose header table says why the original could not be delivered.
func guardHeader(p []byte) ([]byte, bool) {
	// class-id (2), weight (2), body size (8), property flags (2).
	if len(p) < 14 {
		return nil, true // malformed beyond repair: amqp091 reports it
	}
	flags := binary.BigEndian.Uint16(p[12:14])
	if flags&propHeaders == 0 {
		return nil, true
	}
	off := 14
	for _, f := range []uint16{propContentType, propContentEncoding} {
		if flags&f == 0 {
			continue
		}
		if off >= len(p) || off+1+int(p[off]) > len(p) {
			return nil, true
		}
		off += 1 + int(p[off])
	}
	end, err := checkTable(p, off, 0)
	if err == nil {
		return nil, true
	}
	reason := fmt.Sprintf("header table refused (%v): more than %d entries, nesting deeper than %d, or an unknown field type", err, guardMaxEntries, guardMaxDepth)
	out := make([]byte, 0, off+64+len(reason))
	out = append(out, p[:off]...)
	out = appendMarkerTable(out, reason)
	if end >= 0 {
		out = append(out, p[end:]...) // the properties after the table
	} else {
		// The table's extent is unknown: drop the properties after it.
		binary.BigEndian.PutUint16(out[12:14], flags&(propContentType|propContentEncoding|propHeaders))
	}
	return out, false
}

// appendMarkerTable appends a field table with one entry,
// headerUndecodable, whose long-string value is reason.
func appendMarkerTable(b []byte, reason string) []byte {
	entry := 1 + len(headerUndecodable) + 1 + 4 + len(reason)
	b = binary.BigEndian.AppendUint32(b, uint32(entry))
	b = append(b, byte(len(headerUndecodable)))
	b = append(b, headerUndecodable...)
	b = append(b, 'S')
	b = binary.BigEndian.AppendUint32(b, uint32(len(reason)))
	return append(b, reason...)
}

// checkTable checks the field table at p[off:] as amqp091 reads it and
// returns the offset just after it. On error the offset is the table's end
// when its length prefix was readable, -1 otherwise.
func checkTable(p []byte, off, depth int) (int, error) {
	if depth > guardMaxDepth {
		return -1, fmt.Errorf("%w: nesting deeper than %d", errUndecodable, guardMaxDepth)
	}
	if off+4 > len(p) {
		return -1, fmt.Errorf("%w: truncated table", errUndecodable)
	}
	n := binary.BigEndian.Uint32(p[off : off+4])
	off += 4
	if uint64(n) > uint64(len(p)-off) {
		return -1, fmt.Errorf("%w: truncated table", errUndecodable)
	}
	end := off + int(n)
	body := p[off:end]
	entries := 0
	var keys map[string]struct{} // only past the limit: duplicates do not count
	for i := 0; i < len(body); {
		if i+1+int(body[i]) > len(body) {
			return end, fmt.Errorf("%w: truncated field name", errUndecodable)
		}
		key := body[i+1 : i+1+int(body[i])]
		i += 1 + int(body[i])
		next, err := checkField(body, i, depth)
		if err != nil {
			return end, err
		}
		i = next
		entries++
		if entries > guardMaxEntries {
			if keys == nil {
				keys = make(map[string]struct{}, guardMaxEntries+1)
				for j := 0; j < i; {
					// Count the distinct names seen so far again.
					k := body[j+1 : j+1+int(body[j])]
					j += 1 + int(body[j])
					keys[string(k)] = struct{}{}
					j, _ = checkField(body, j, depth)
				}
			} else {
				keys[string(key)] = struct{}{}
			}
			if len(keys) > guardMaxEntries {
				return end, fmt.Errorf("%w: table of more than %d entries", errUndecodable, guardMaxEntries)
			}
		}
	}
	return end, nil
}

// checkArray checks the field array at p[off:] as amqp091 reads it.
func checkArray(p []byte, off, depth int) (int, error) {
	if depth > guardMaxDepth {
		return -1, fmt.Errorf("%w: nesting deeper than %d", errUndecodable, guardMaxDepth)
	}
	if off+4 > len(p) {
		return -1, fmt.Errorf("%w: truncated array", errUndecodable)
	}
	n := binary.BigEndian.Uint32(p[off : off+4])
	off += 4
	if uint64(n) > uint64(len(p)-off) {
		return -1, fmt.Errorf("%w: truncated array", errUndecodable)
	}
	end := off + int(n)
	body := p[off:end]
	count := 0
	for i := 0; i < len(body); {
		next, err := checkField(body, i, depth)
		if err != nil {
			return end, err
		}
		i = next
		if count++; count > guardMaxEntries {
			return end, fmt.Errorf("%w: array of more than %d elements", errUndecodable, guardMaxEntries)
		}
	}
	return end, nil
}

// checkField checks the typed field value at p[off:] and returns the
// offset after it.
func checkField(p []byte, off, depth int) (int, error) {
	if off >= len(p) {
		return -1, fmt.Errorf("%w: truncated field", errUndecodable)
	}
	typ := p[off]
	off++
	fixed := func(n int) (int, error) {
		if off+n > len(p) {
			return -1, fmt.Errorf("%w: truncated %q field", errUndecodable, typ)
		}
		return off + n, nil
	}
	switch typ {
	case 't', 'b', 'B':
		return fixed(1)
	case 's', 'u':
		return fixed(2)
	case 'I', 'i', 'f':
		return fixed(4)
	case 'l', 'd', 'T':
		return fixed(8)
	case 'D':
		return fixed(5)
	case 'V':
		return off, nil
	case 'S', 'x':
		if off+4 > len(p) {
			return -1, fmt.Errorf("%w: truncated %q field", errUndecodable, typ)
		}
		n := binary.BigEndian.Uint32(p[off : off+4])
		if n > 1<<31-1 || uint64(n) > uint64(len(p)-off-4) {
			return -1, fmt.Errorf("%w: truncated %q field", errUndecodable, typ)
		}
		return off + 4 + int(n), nil
	case 'A':
		return checkArray(p, off, depth+1)
	case 'F':
		return checkTable(p, off, depth+1)
	}
	return -1, fmt.Errorf("%w: unknown field type %q", errUndecodable, typ)
}
