package kafka

import (
	crand "crypto/rand"
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"time"
)

// idGen makes UUIDv7 message IDs (RFC 9562) for a whole Publish call at the
// cost of one clock read: a 48-bit Unix millisecond timestamp, a 12-bit
// counter in rand_a that keeps IDs of one millisecond increasing (method 1
// of RFC 9562 section 6.2; on overflow the timestamp moves on by one
// millisecond), and 62 bits from a ChaCha8 stream seeded from crypto/rand.
// IDs sort by creation time like broker.NewID's, and are as unique.
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

const hexDigits = "0123456789abcdef"

// next returns n new IDs, in increasing order.
func (g *idGen) next(n int) []string {
	ms := time.Now().UnixMilli()
	out := make([]string, n)
	g.mu.Lock()
	defer g.mu.Unlock()
	if ms > g.lastMs {
		g.lastMs = ms
		g.seq = uint16(g.rng.Uint64() & 0x1ff) // random start, leaving room to count
	}
	for i := range out {
		if g.seq > 0xfff {
			g.lastMs++
			g.seq = 0
		}
		var u [16]byte
		binary.BigEndian.PutUint64(u[8:], g.rng.Uint64())
		binary.BigEndian.PutUint16(u[6:], 0x7000|g.seq) // version 7, counter
		binary.BigEndian.PutUint16(u[4:], uint16(g.lastMs))
		binary.BigEndian.PutUint32(u[0:], uint32(g.lastMs>>16))
		u[8] = u[8]&0x3f | 0x80 // variant 10
		g.seq++
		var b [36]byte
		j := 0
		for k, x := range u {
			if k == 4 || k == 6 || k == 8 || k == 10 {
				b[j] = '-'
				j++
			}
			b[j], b[j+1] = hexDigits[x>>4], hexDigits[x&0xf]
			j += 2
		}
		out[i] = string(b[:])
	}
	return out
}
