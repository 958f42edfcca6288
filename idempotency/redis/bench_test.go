package redis_test

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// casScript is the compare-and-set a hand-written lease would use to mark
// a key done only while it still holds it.
var casScript = goredis.NewScript(`if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false`)

const (
	benchParallelism = 4   // x GOMAXPROCS goroutines
	benchBatch       = 100 // keys per pipelined batch
	benchTTL         = time.Minute
)

// benchEnv is one Redis client and key space shared by a benchmark's
// variants, so raw and steadfast run against the same server the same way.
type benchEnv struct {
	rdb    *goredis.Client
	prefix string
	seq    atomic.Int64
	store  *idemredis.Store
	token  string // a value the size of the store's lease token
}

func newBenchEnv(b *testing.B) *benchEnv {
	rdb, prefix := testenv.Redis(b)
	s, err := idemredis.New(rdb, idemredis.Config{Prefix: prefix, Lease: benchTTL, Retention: benchTTL})
	if err != nil {
		b.Fatal(err)
	}
	return &benchEnv{rdb: rdb, prefix: prefix, store: s, token: "L0123456789abcdef-1a2b"}
}

// key returns a fresh message ID, UUID-sized.
func (e *benchEnv) key() string {
	return "0190b6a2-7c1e-7d3f-9a4b-" + strconv.FormatInt(1e11+e.seq.Add(1), 10)
}

// reset deletes every key of e, so each measurement starts from the same
// (empty) key space whatever ran before it.
func (e *benchEnv) reset(b *testing.B) {
	ctx := context.Background()
	iter := e.rdb.Scan(ctx, 0, e.prefix+"*", 10000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		if keys = append(keys, iter.Val()); len(keys) == 10000 {
			if err := e.rdb.Unlink(ctx, keys...).Err(); err != nil {
				b.Fatal(err)
			}
			keys = keys[:0]
		}
	}
	if err := iter.Err(); err != nil {
		b.Fatal(err)
	}
	if len(keys) > 0 {
		if err := e.rdb.Unlink(ctx, keys...).Err(); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
}

// parallel runs op on benchParallelism x GOMAXPROCS goroutines and reports
// msgs/s, with perOp messages per op. It starts from an empty key space.
func (e *benchEnv) parallel(b *testing.B, perOp int, op func(ctx context.Context) error) {
	ctx := context.Background()
	e.reset(b)
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N*perOp)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkClaim measures taking a key: Store.Acquire against a raw SET NX
// PX, one key per round trip (single) and 100 keys per pipelined round trip
// (AcquireBatch against a raw pipeline of SET NX PX).
func BenchmarkClaim(b *testing.B) {
	e := newBenchEnv(b)
	b.Run("single/raw", func(b *testing.B) {
		e.parallel(b, 1, func(ctx context.Context) error {
			err := e.rdb.SetArgs(ctx, e.prefix+"raw:"+e.key(), e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL}).Err()
			if err == goredis.Nil {
				err = nil
			}
			return err
		})
	})
	b.Run("single/steadfast", func(b *testing.B) {
		e.parallel(b, 1, func(ctx context.Context) error {
			_, _, err := e.store.Acquire(ctx, "billing", e.key(), nil)
			return err
		})
	})
	b.Run("pipelined/raw", func(b *testing.B) {
		e.parallel(b, benchBatch, func(ctx context.Context) error {
			pipe := e.rdb.Pipeline()
			for range benchBatch {
				pipe.SetArgs(ctx, e.prefix+"raw:"+e.key(), e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL})
			}
			_, err := pipe.Exec(ctx)
			if err == goredis.Nil {
				err = nil
			}
			return err
		})
	})
	b.Run("pipelined/steadfast", func(b *testing.B) {
		e.parallel(b, benchBatch, func(ctx context.Context) error {
			keys := make([]string, benchBatch)
			for i := range keys {
				keys[i] = e.key()
			}
			claims, err := e.store.AcquireBatch(ctx, "billing", keys)
			if err == nil {
				for _, c := range claims {
					if c.Err != nil {
						return c.Err
					}
				}
			}
			return err
		})
	})
}

// BenchmarkDedup measures the whole deduplication of a message: take the key,
// then mark it done. Raw: SET NX PX, then SET XX PX (a plain overwrite, with
// none of the store's lease check); raw-cas: SET NX PX, then a hand-written
// compare-and-set script doing the store's check; steadfast: Acquire, then
// Complete. Pipelined: both steps for 100 keys, each in one round trip.
func BenchmarkDedup(b *testing.B) {
	e := newBenchEnv(b)
	b.Run("single/raw", func(b *testing.B) {
		e.parallel(b, 1, func(ctx context.Context) error {
			k := e.prefix + "raw:" + e.key()
			if err := e.rdb.SetArgs(ctx, k, e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL}).Err(); err != nil {
				return err
			}
			return e.rdb.SetArgs(ctx, k, "D", goredis.SetArgs{Mode: "XX", TTL: benchTTL}).Err()
		})
	})
	b.Run("single/raw-cas", func(b *testing.B) {
		e.parallel(b, 1, func(ctx context.Context) error {
			k := e.prefix + "raw:" + e.key()
			if err := e.rdb.SetArgs(ctx, k, e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL}).Err(); err != nil {
				return err
			}
			return casScript.Run(ctx, e.rdb, []string{k}, e.token, "D", benchTTL.Milliseconds()).Err()
		})
	})
	b.Run("single/steadfast", func(b *testing.B) {
		e.parallel(b, 1, func(ctx context.Context) error {
			l, _, err := e.store.Acquire(ctx, "billing", e.key(), nil)
			if err != nil {
				return err
			}
			return l.Complete(ctx, nil)
		})
	})
	b.Run("pipelined/raw", func(b *testing.B) {
		e.parallel(b, benchBatch, func(ctx context.Context) error {
			keys := make([]string, benchBatch)
			pipe := e.rdb.Pipeline()
			for i := range keys {
				keys[i] = e.prefix + "raw:" + e.key()
				pipe.SetArgs(ctx, keys[i], e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
			for _, k := range keys {
				pipe.SetArgs(ctx, k, "D", goredis.SetArgs{Mode: "XX", TTL: benchTTL})
			}
			_, err := pipe.Exec(ctx)
			return err
		})
	})
	b.Run("pipelined/raw-cas", func(b *testing.B) {
		if err := casScript.Load(context.Background(), e.rdb).Err(); err != nil {
			b.Fatal(err)
		}
		e.parallel(b, benchBatch, func(ctx context.Context) error {
			keys := make([]string, benchBatch)
			pipe := e.rdb.Pipeline()
			for i := range keys {
				keys[i] = e.prefix + "raw:" + e.key()
				pipe.SetArgs(ctx, keys[i], e.token, goredis.SetArgs{Mode: "NX", TTL: benchTTL})
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return err
			}
			for _, k := range keys {
				casScript.EvalSha(ctx, pipe, []string{k}, e.token, "D", benchTTL.Milliseconds())
			}
			_, err := pipe.Exec(ctx)
			return err
		})
	})
	b.Run("pipelined/steadfast", func(b *testing.B) {
		e.parallel(b, benchBatch, func(ctx context.Context) error {
			keys := make([]string, benchBatch)
			leases := make([]*idemredis.Lease, benchBatch)
			for i := range keys {
				keys[i] = e.key()
			}
			claims, err := e.store.AcquireBatch(ctx, "billing", keys)
			if err != nil {
				return err
			}
			for i, c := range claims {
				if c.Err != nil {
					return c.Err
				}
				leases[i] = c.Lease
			}
			return e.store.CompleteBatch(ctx, leases...)
		})
	})
}
