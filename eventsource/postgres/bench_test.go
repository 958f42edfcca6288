package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

// Benchmarks of the event store beside raw pgx doing the same rows, in the
// same run, on the same server (make bench pairs .../steadfast with
// .../raw).
//
// The raw baseline is the event table a team would write by hand: a
// position identity, UNIQUE (stream_id, version) for optimistic
// concurrency, UNIQUE event_id, type, JSON payload and metadata; appends are
// one INSERT per save (the writer knows the next version), loads one SELECT
// of the stream decoded with encoding/json, the log one SELECT ... WHERE
// position > $1 ORDER BY position LIMIT 1000 per page (which skips late
// commits: the store's fence is what costs extra there).
//
//   - BenchmarkAppend/1-event/{1,8}-writers: one event per transaction, each
//     writer on its own stream, expected version checked. events/s.
//     steadfast-nonotify: without the (coalesced) notifications.
//   - BenchmarkAppend/100-events: 100 events per transaction. events/s.
//   - BenchmarkLoad/10000-events: load a 10,000-event stream and fold it
//     (steadfast: Repository.Load with the registry; steadfast-snapshot:
//     with a snapshot at the last event, so it reads one row; raw: SELECT
//     type, data ... ORDER BY version, encoding/json, a type switch).
//   - BenchmarkReadLog: read 100,000 events of 1,000 streams from the start,
//     1,000 per page, decoding every event. events/s.

const rawSchema = `CREATE TABLE raw_events (
    position    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    event_id    text        NOT NULL UNIQUE,
    type        text        NOT NULL,
    data        bytea,
    metadata    jsonb,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
)`

// ItemAdded is the benchmarks' event.
type ItemAdded struct {
	SKU   string `json:"sku"`
	Qty   int    `json:"qty"`
	Price int    `json:"price"`
}

type cart struct {
	Items, Total int
}

func evolveCart(c cart, e any) cart {
	if a, ok := e.(ItemAdded); ok {
		c.Items += a.Qty
		c.Total += a.Qty * a.Price
	}
	return c
}

var (
	benchPayload  = []byte(`{"sku":"ABC-123","qty":2,"price":1999}`)
	benchMetadata = eventsource.Metadata{broker.HeaderCorrelationID: "0192f8a4-6c1e-7b3a-9d2f-4e5a6b7c8d9e"}
	benchMDJSON   = `{"correlation-id":"0192f8a4-6c1e-7b3a-9d2f-4e5a6b7c8d9e"}`
)

func benchRegistry() *eventsource.Registry {
	reg := eventsource.NewRegistry()
	eventsource.Register[ItemAdded](reg, "cart.item-added", 1)
	return reg
}

func benchEvent() eventsource.EventData {
	return eventsource.EventData{Type: "cart.item-added", SchemaVersion: 1, Data: benchPayload, Metadata: benchMetadata}
}

// benchDB is a schema with the store's tables and the raw table.
type benchDB struct {
	pool  *pgxpool.Pool
	store *postgres.Store
}

func newBenchDB(b *testing.B, cfg postgres.Config) *benchDB {
	b.Helper()
	pcfg, err := pgxpool.ParseConfig(testenv.PostgresURL(b))
	if err != nil {
		b.Fatal(err)
	}
	pcfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	cfg.Channel = testenv.Name(b, "es")
	s, err := postgres.New(pool, cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, rawSchema); err != nil {
		b.Fatal(err)
	}
	return &benchDB{pool: pool, store: s}
}

// writers runs b.N operations over n goroutines, each with its own stream
// and version counter, and reports events/s.
func writers(b *testing.B, n, perOp int, op func(ctx context.Context, stream string, version int64) error) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	b.ResetTimer()
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stream := fmt.Sprintf("cart-%d-%s", w, broker.NewID())
			var version int64
			for next.Add(1) <= int64(b.N) {
				if err := op(ctx, stream, version); err != nil {
					errs <- err
					return
				}
				version += int64(perOp)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N*perOp)/elapsed.Seconds(), "events/s")
}

func BenchmarkAppend(b *testing.B) {
	for _, w := range []int{1, 8} {
		b.Run(fmt.Sprintf("1-event/%d-writers", w), func(b *testing.B) {
			db := newBenchDB(b, postgres.Config{})
			quiet, err := postgres.New(db.pool, postgres.Config{DisableNotify: true, Channel: testenv.Name(b, "q")})
			if err != nil {
				b.Fatal(err)
			}
			for _, s := range []struct {
				name  string
				store *postgres.Store
			}{{"steadfast", db.store}, {"steadfast-nonotify", quiet}} {
				b.Run(s.name, func(b *testing.B) {
					writers(b, w, 1, func(ctx context.Context, stream string, version int64) error {
						_, err := s.store.Append(ctx, eventsource.StreamAppend{StreamID: stream,
							Expected: eventsource.ExpectedVersion(version), Events: []eventsource.EventData{benchEvent()}})
						return err
					})
				})
			}
			b.Run("raw", func(b *testing.B) {
				writers(b, w, 1, func(ctx context.Context, stream string, version int64) error {
					_, err := db.pool.Exec(ctx, `INSERT INTO raw_events (stream_id, version, event_id, type, data, metadata)
VALUES ($1, $2, $3, $4, $5, $6)`, stream, version+1, broker.NewID(), "cart.item-added", benchPayload, benchMDJSON)
					return err
				})
			})
		})
	}
	b.Run("100-events", func(b *testing.B) {
		db := newBenchDB(b, postgres.Config{})
		const n = 100
		b.Run("steadfast", func(b *testing.B) {
			evs := make([]eventsource.EventData, n)
			for i := range evs {
				evs[i] = benchEvent()
			}
			writers(b, 1, n, func(ctx context.Context, stream string, version int64) error {
				_, err := db.store.Append(ctx, eventsource.StreamAppend{StreamID: stream,
					Expected: eventsource.ExpectedVersion(version), Events: evs})
				return err
			})
		})
		b.Run("raw", func(b *testing.B) {
			writers(b, 1, n, func(ctx context.Context, stream string, version int64) error {
				ids, versions, data, md := make([]string, n), make([]int64, n), make([][]byte, n), make([]string, n)
				for i := range ids {
					ids[i], versions[i], data[i], md[i] = broker.NewID(), version+int64(i)+1, benchPayload, benchMDJSON
				}
				_, err := db.pool.Exec(ctx, `INSERT INTO raw_events (stream_id, version, event_id, type, data, metadata)
SELECT $1, v, id, $2, d, m::jsonb FROM unnest($3::bigint[], $4::text[], $5::bytea[], $6::text[]) AS u(v, id, d, m)`,
					stream, "cart.item-added", versions, ids, data, md)
				return err
			})
		})
	})
}

// fillStream appends n events to stream in the store and the raw table.
func fillStream(b *testing.B, db *benchDB, stream string, n int) {
	ctx := context.Background()
	for v := 0; v < n; v += 1000 {
		evs := make([]eventsource.EventData, min(1000, n-v))
		versions, ids, data, md := make([]int64, len(evs)), make([]string, len(evs)), make([][]byte, len(evs)), make([]string, len(evs))
		for i := range evs {
			evs[i] = benchEvent()
			versions[i], ids[i], data[i], md[i] = int64(v+i+1), broker.NewID(), benchPayload, benchMDJSON
		}
		if _, err := db.store.Append(ctx, eventsource.StreamAppend{StreamID: stream, Expected: eventsource.ExpectedVersion(v), Events: evs}); err != nil {
			b.Fatal(err)
		}
		if _, err := db.pool.Exec(ctx, `INSERT INTO raw_events (stream_id, version, event_id, type, data, metadata)
SELECT $1, v, id, $2, d, m::jsonb FROM unnest($3::bigint[], $4::text[], $5::bytea[], $6::text[]) AS u(v, id, d, m)`,
			stream, "cart.item-added", versions, ids, data, md); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := db.pool.Exec(ctx, "ANALYZE"); err != nil {
		b.Fatal(err)
	}
}

// rawLoad is the loader a team would write by hand.
func rawLoad(ctx context.Context, pool *pgxpool.Pool, stream string) (cart, int, error) {
	rows, err := pool.Query(ctx, `SELECT type, data FROM raw_events WHERE stream_id = $1 ORDER BY version`, stream)
	if err != nil {
		return cart{}, 0, err
	}
	defer rows.Close()
	var c cart
	n := 0
	var typ string
	var data []byte
	for rows.Next() {
		if err := rows.Scan(&typ, &data); err != nil {
			return cart{}, 0, err
		}
		switch typ {
		case "cart.item-added":
			var e ItemAdded
			if err := json.Unmarshal(data, &e); err != nil {
				return cart{}, 0, err
			}
			c = evolveCart(c, e)
		default:
			return cart{}, 0, fmt.Errorf("unknown type %q", typ)
		}
		n++
	}
	return c, n, rows.Err()
}

func BenchmarkLoad(b *testing.B) {
	const n = 10000
	b.Run(fmt.Sprintf("%d-events", n), func(b *testing.B) {
		db := newBenchDB(b, postgres.Config{})
		fillStream(b, db, "cart-big", n)
		ctx := context.Background()
		decider := eventsource.Decider[cart, struct{}, any]{
			Decide: func(cart, struct{}) ([]any, error) { return nil, nil },
			Evolve: evolveCart,
		}
		plain, err := eventsource.NewRepository(db.store, benchRegistry(), decider, eventsource.RepositoryConfig[cart]{})
		if err != nil {
			b.Fatal(err)
		}
		snapping, err := eventsource.NewRepository(db.store, benchRegistry(), decider, eventsource.RepositoryConfig[cart]{Snapshot: eventsource.Every(n)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := snapping.Snapshot(ctx, "cart-big"); err != nil {
			b.Fatal(err)
		}
		want, _, err := rawLoad(ctx, db.pool, "cart-big")
		if err != nil {
			b.Fatal(err)
		}
		b.Run("steadfast", func(b *testing.B) {
			for range b.N {
				l, err := plain.Load(ctx, "cart-big")
				if err != nil || l.State != want || l.EventsRead != n {
					b.Fatalf("load: %+v, %v", l, err)
				}
			}
		})
		b.Run("steadfast-snapshot", func(b *testing.B) {
			for range b.N {
				l, err := snapping.Load(ctx, "cart-big")
				if err != nil || l.State != want || l.EventsRead != 1 {
					b.Fatalf("load: %+v, %v", l, err)
				}
			}
		})
		b.Run("raw", func(b *testing.B) {
			for range b.N {
				c, got, err := rawLoad(ctx, db.pool, "cart-big")
				if err != nil || c != want || got != n {
					b.Fatalf("load: %+v, %d, %v", c, got, err)
				}
			}
		})
	})
}

func BenchmarkReadLog(b *testing.B) {
	const streams, per = 1000, 100
	b.Run(fmt.Sprintf("%d-events", streams*per), func(b *testing.B) {
		db := newBenchDB(b, postgres.Config{DisableNotify: true})
		ctx := context.Background()
		// 100 rounds of one event to each of 1,000 streams, 1,000 events a
		// transaction.
		var last eventsource.Position
		for v := range per {
			appends := make([]eventsource.StreamAppend, streams)
			for s := range appends {
				appends[s] = eventsource.StreamAppend{StreamID: fmt.Sprintf("cart-%d", s), Expected: eventsource.ExpectedVersion(v),
					Events: []eventsource.EventData{benchEvent()}}
			}
			res, err := db.store.Append(ctx, appends...)
			if err != nil {
				b.Fatal(err)
			}
			last = eventsource.LastPosition(res)
			ids, ss, data, md := make([]string, streams), make([]string, streams), make([][]byte, streams), make([]string, streams)
			for s := range ids {
				ids[s], ss[s], data[s], md[s] = broker.NewID(), fmt.Sprintf("cart-%d", s), benchPayload, benchMDJSON
			}
			if _, err := db.pool.Exec(ctx, `INSERT INTO raw_events (stream_id, version, event_id, type, data, metadata)
SELECT s, $1, id, $2, d, m::jsonb FROM unnest($3::text[], $4::text[], $5::bytea[], $6::text[]) AS u(s, id, d, m)`,
				int64(v+1), "cart.item-added", ss, ids, data, md); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := db.pool.Exec(ctx, "ANALYZE"); err != nil {
			b.Fatal(err)
		}
		reader, err := eventsource.NewReader(db.store, benchRegistry(), eventsource.ReaderConfig{BatchSize: 1000})
		if err != nil {
			b.Fatal(err)
		}
		b.Run("steadfast", func(b *testing.B) {
			start := time.Now()
			total := 0
			for range b.N {
				var pos eventsource.Position
				c := cart{}
				for pos.Before(last) {
					batch, err := reader.Read(ctx, pos)
					if err != nil {
						b.Fatal(err)
					}
					for _, e := range batch.Events {
						c = evolveCart(c, e.Event)
					}
					total += len(batch.Events)
					pos = batch.Checkpoint
				}
			}
			b.ReportMetric(float64(total)/time.Since(start).Seconds(), "events/s")
		})
		b.Run("raw", func(b *testing.B) {
			start := time.Now()
			total := 0
			for range b.N {
				var pos int64
				c := cart{}
				for {
					rows, err := db.pool.Query(ctx, `SELECT position, stream_id, version, event_id, type, data, metadata, occurred_at
FROM raw_events WHERE position > $1 ORDER BY position LIMIT 1000`, pos)
					if err != nil {
						b.Fatal(err)
					}
					n := 0
					for rows.Next() {
						var r eventsource.Record
						var md []byte
						if err := rows.Scan(&pos, &r.StreamID, &r.Version, &r.ID, &r.Type, &r.Data, &md, &r.Time); err != nil {
							b.Fatal(err)
						}
						if err := json.Unmarshal(md, &r.Metadata); err != nil {
							b.Fatal(err)
						}
						var e ItemAdded
						if err := json.Unmarshal(r.Data, &e); err != nil {
							b.Fatal(err)
						}
						c = evolveCart(c, e)
						n++
					}
					if rows.Err() != nil {
						b.Fatal(rows.Err())
					}
					total += n
					if n < 1000 {
						break
					}
				}
			}
			b.ReportMetric(float64(total)/time.Since(start).Seconds(), "events/s")
		})
	})
}
