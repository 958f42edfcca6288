package kafka

import (
	"context"
	"errors"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/fault"
)

// Crash tests: what a crash does lives here, behind the library's fault
// points (internal/fault), not in the library.

// errCrashed ends a Pipeline's Run after crashPipeline's crash.
var errCrashed = errors.New("kafka: pipeline crashed (test)")

// crashPipeline returns ctx with which a Pipeline's Run crashes, as a
// process would, before the first input crash returns true for (inTxn is
// the number of inputs already transformed in the open transaction): the
// records produced so far are flushed, and Run ends with errCrashed without
// ending the transaction.
func crashPipeline(ctx context.Context, crash func(d broker.Delivery, inTxn int) bool) context.Context {
	return fault.With(ctx, func(point string, data any) error {
		in, ok := data.(transformPoint)
		if point != pointTransform || !ok || !crash(in.d, in.inTxn) {
			return nil
		}
		fctx, cancel := context.WithTimeout(context.Background(), DefaultTransactionTimeout)
		defer cancel()
		_ = in.cl.Flush(fctx)
		return errCrashed
	})
}

// errSimulatedCrash is the fault crashOnStop injects.
var errSimulatedCrash = errors.New("kafka: simulated crash")

// crashOnStop returns ctx with which a Subscribe member, when ctx ends,
// stops like a crashed process: nothing completed since the last periodic
// commit is committed.
func crashOnStop(ctx context.Context) context.Context {
	return fault.With(ctx, func(point string, _ any) error {
		if point == pointStop {
			return errSimulatedCrash
		}
		return nil
	})
}

// countingPool is a recordPool that counts the slices it lends again, so a
// test can check the pool was used.
type countingPool struct {
	recordPool
	mu     sync.Mutex
	lent   map[*kgo.Record]bool // first element of every slice lent
	reused int
}

func (c *countingPool) GetRecords(n int) []kgo.Record {
	s := c.recordPool.GetRecords(n)
	first := &s[:1][0]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lent == nil {
		c.lent = make(map[*kgo.Record]bool)
	}
	if c.lent[first] {
		c.reused++
	}
	c.lent[first] = true
	return s
}

// Reused returns how many slices were lent again.
func (c *countingPool) Reused() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reused
}
