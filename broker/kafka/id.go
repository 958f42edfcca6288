package kafka

import (
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// idGen makes UUIDv7 message IDs (RFC 9562) for a whole Publish call at the
// cost of one clock read and one lock: a 48-bit Unix millisecond timestamp, a
// 12-bit counter in rand_a that keeps IDs of one millisecond increasing
// (method 1 of RFC 9562 section 6.2; on overflow the timestamp moves on by
// one millisecond), and 62 bits from a ChaCha8 stream seeded from
// crypto/rand. IDs sort by creation time like broker.NewID's, and are as
// unique.
type idGen struct {
	mu     sync.Mutex
	rng    *rand.ChaCha8
	lastMs int64
	seq    uint16
}

func newIDGen() *idGen {
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails on supported platforms
	return &idGen{rng: rand.NewChaCha8(seed)}
}

// uuidLen is the length of a UUID in binary form, uuidTextLen in canonical
// text form (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lowercase).
const (
	uuidLen     = 16
	uuidTextLen = 36
)

// fill writes len(dst)/uuidLen new IDs in binary form into dst, in
// increasing order.
func (g *idGen) fill(dst []byte) {
	n := len(dst) / uuidLen
	if n == 0 {
		return
	}
	ms := time.Now().UnixMilli()
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms > g.lastMs {
		g.lastMs = ms
		g.seq = uint16(g.rng.Uint64() & 0x1ff) // random start, leaving room to count
	}
	for i := range n {
		if g.seq > 0xfff {
			g.lastMs++
			g.seq = 0
		}
		u := dst[i*uuidLen : (i+1)*uuidLen : (i+1)*uuidLen]
		binary.BigEndian.PutUint32(u[0:], uint32(g.lastMs>>16))
		binary.BigEndian.PutUint16(u[4:], uint16(g.lastMs))
		binary.BigEndian.PutUint16(u[6:], 0x7000|g.seq) // version 7, counter
		binary.BigEndian.PutUint64(u[8:], g.rng.Uint64())
		u[8] = u[8]&0x3f | 0x80 // variant 10
		g.seq++
	}
}

const hexDigits = "0123456789abcdef"

// formatUUID returns the canonical text form of a binary UUID.
func formatUUID(u []byte) string { return (*textArena)(nil).uuid(u) }

// hexPairs holds the two lowercase hex digits of every byte value, the
// first in the low byte.
var hexPairs = func() (t [256]uint16) {
	for i := range t {
		t[i] = uint16(hexDigits[i>>4]) | uint16(hexDigits[i&0xf])<<8
	}
	return t
}()

// putUUID writes the canonical text form of the binary UUID u into b.
func putUUID(b, u []byte) {
	b = b[:uuidTextLen:uuidTextLen]
	u = u[:uuidLen:uuidLen]
	hexInto(b[0:8], u[0:4])
	b[8] = '-'
	hexInto(b[9:13], u[4:6])
	b[13] = '-'
	hexInto(b[14:18], u[6:8])
	b[18] = '-'
	hexInto(b[19:23], u[8:10])
	b[23] = '-'
	hexInto(b[24:36], u[10:16])
}

// hexInto writes the hex digits of src into dst, which is twice as long.
func hexInto(dst, src []byte) {
	_ = dst[2*len(src)-1]
	for i, v := range src {
		binary.LittleEndian.PutUint16(dst[2*i:], hexPairs[v])
	}
}

// parseUUID writes the binary form of s into dst and reports whether s is a
// UUID in canonical lowercase text form, the only form formatUUID gives back
// unchanged.
func parseUUID(dst []byte, s string) bool {
	if len(s) != uuidTextLen || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	j := 0
	for i := 0; i < uuidTextLen; i += 2 {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			i++
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[j] = hi<<4 | lo
		j++
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}
