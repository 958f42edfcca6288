package kafka

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// recordPool lends a member's franz-go client the slices it decodes fetched
// record batches into (kgo.PoolRecords), so a steady consumer does not
// allocate every batch's records anew. The member hands each record back
// with kgo.Record.Recycle once it is finished with it: its handler
// succeeded, it was dropped, or it was never queued. franz-go puts a
// batch's slice back into the pool when the last of its records was
// recycled; a slice with a record that is never finished is left to the
// garbage collector.
//
// Nothing a handler received refers to a record: a Delivery's key, ID and
// headers are copies, and its payload points into the fetched bytes, which
// are not pooled. A record is read again only to retry its message, and a
// message waiting for a retry is not finished.
type recordPool struct {
	p sync.Pool // of *[]kgo.Record
}

// GetRecords returns an empty slice of capacity at least n.
func (rp *recordPool) GetRecords(n int) []kgo.Record {
	if s, ok := rp.p.Get().(*[]kgo.Record); ok && cap(*s) >= n {
		return (*s)[:0]
	}
	return make([]kgo.Record, 0, roundUp(n))
}

// PutRecords keeps s for reuse.
func (rp *recordPool) PutRecords(s []kgo.Record) { rp.p.Put(&s) }

// roundUp returns the capacity of a new slice for n records: n rounded up
// to a power of two from 16 to 64, to a multiple of 64 above, so the slice also
// fits later batches that are a little larger, without making a large
// slice much larger.
func roundUp(n int) int {
	if n > 64 {
		return (n + 63) &^ 63
	}
	c := 16
	for c < n {
		c *= 2
	}
	return c
}
