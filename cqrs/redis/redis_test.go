package redis_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrstest"
	"github.com/steadfast-go/steadfast/cqrs/redis"
	esmemory "github.com/steadfast-go/steadfast/eventsource/memory"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

type writer struct {
	tx     *redis.Tx
	prefix string
}

func (w writer) AddScores(ctx context.Context, points map[string]int64, n int64) error {
	for k, v := range points {
		w.tx.HIncrBy(ctx, "scores", k, v)
	}
	w.tx.HIncrBy(ctx, "scores", "_events", n)
	return nil
}

func (w writer) Effect(ctx context.Context, ids []string) error {
	vals := make([]any, len(ids))
	for i, id := range ids {
		vals[i] = id
	}
	w.tx.Pipe().RPush(ctx, w.prefix+w.tx.Projection().Name+":effects", vals...)
	return nil
}

func model(h map[string]string) (cqrstest.Model, error) {
	m := cqrstest.Model{Scores: map[string]int64{}}
	for k, v := range h {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return m, err
		}
		if k == "_events" {
			m.Events = n
		} else {
			m.Scores[k] = n
		}
	}
	return m, nil
}

func backend(t *testing.T) (cqrstest.Backend[*redis.Tx], *goredis.Client, *redis.Store, string) {
	rdb, prefix := testenv.Redis(t)
	s, err := redis.New(rdb, redis.Config{Prefix: prefix, LeaseTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return cqrstest.Backend[*redis.Tx]{
		Store:  s,
		Events: esmemory.New(),
		Writer: func(tx *redis.Tx, b *cqrs.Batch) cqrstest.Writer { return writer{tx, prefix} },
		Read: func(ctx context.Context, id cqrs.ID) (cqrstest.Model, error) {
			h, err := rdb.HGetAll(ctx, s.VersionPrefix(id)+"scores").Result()
			if err != nil {
				return cqrstest.Model{}, err
			}
			return model(h)
		},
		ReadActive: func(ctx context.Context, name string) (cqrstest.Model, error) {
			h, err := s.HGetAll(ctx, name, "scores")
			if err != nil {
				return cqrstest.Model{}, err
			}
			return model(h)
		},
		Effects: func(ctx context.Context, name string) ([]string, error) {
			return rdb.LRange(ctx, prefix+name+":effects", 0, -1).Result()
		},
		Kill: func(t *testing.T, id cqrs.ID) {
			if err := rdb.Del(context.Background(), s.LeaseKey(id)).Err(); err != nil {
				t.Fatal(err)
			}
		},
	}, rdb, s, prefix
}

// TestConformance runs the suite; its takeover case deletes the holder's
// lease key, as its expiry after the holder's death would.
func TestConformance(t *testing.T) {
	t.Parallel()
	cqrstest.Run(t, cqrstest.Features{Timeout: 2 * time.Minute, CrashPoints: []string{"cqrs/redis.commit"}}, func(t *testing.T) cqrstest.Backend[*redis.Tx] {
		b, _, _, _ := backend(t)
		return b
	})
}
