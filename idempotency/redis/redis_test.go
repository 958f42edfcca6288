package redis_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/idempotencytest"
	idemredis "github.com/steadfast-go/steadfast/idempotency/redis"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func newStore(t testing.TB, cfg idemredis.Config) *idemredis.Store {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	cfg.Prefix = prefix
	s, err := idemredis.New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	t.Parallel()
	idempotencytest.Run(t, idempotencytest.Features{LeaseExpiry: true},
		func(t *testing.T, o idempotencytest.Options) idempotency.Store {
			return newStore(t, idemredis.Config{Lease: o.Lease})
		})
}

// counter is the business effect of the exactly-once tests: one row in
// Postgres that the handler increments.
func counter(t *testing.T) (*pgxpool.Pool, func(context.Context) error, func() int) {
	t.Helper()
	pool := testenv.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counter VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	inc := func(ctx context.Context) error {
		_, err := pool.Exec(ctx, `UPDATE counter SET n = n + 1 WHERE id = 1`)
		return err
	}
	read := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT n FROM counter WHERE id = 1`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	return pool, inc, read
}

// The same message delivered by 50 goroutines at once, through the consumer
// middleware on Redis, increments the Postgres counter row once.
func TestConcurrentDeliveriesOneEffect(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, inc, read := counter(t)
	mw, err := idempotency.Consumer(newStore(t, idemredis.Config{}), idempotency.ConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c := idempotencytest.NewContention(50)
	h := broker.Chain(func(ctx context.Context, d broker.Delivery) error {
		c.Hold()
		return inc(ctx)
	}, mw)
	d := broker.Delivery{Message: broker.NewMessage("orders", []byte("x")), Attempt: 1, Group: "billing", Partition: -1, Offset: -1}
	c.Deliver(ctx, t, d, h)
	if n := read(); n != 1 {
		t.Fatalf("counter = %d after 50 concurrent deliveries, want 1", n)
	}
	t.Logf("%d in-progress answers", c.InProgress())
}

func TestKeysDoNotCollide(t *testing.T) {
	s := newStore(t, idemredis.Config{})
	keys := map[string]bool{}
	for _, p := range [][2]string{{"a:b", "c"}, {"a", "b:c"}, {"a%3Ab", "c"}, {"a%b", "c"}, {"a", "%b:c"}} {
		k := s.Key(p[0], p[1])
		if keys[k] {
			t.Fatalf("Key(%q, %q) = %q collides", p[0], p[1], k)
		}
		keys[k] = true
	}
}

func TestConfigValidation(t *testing.T) {
	rdb, _ := testenv.Redis(t)
	if _, err := idemredis.New(nil, idemredis.Config{}); !errors.Is(err, idemredis.ErrInvalidConfig) {
		t.Fatalf("nil client: %v, want ErrInvalidConfig", err)
	}
	for _, cfg := range []idemredis.Config{{Lease: -time.Second}, {Retention: time.Microsecond}} {
		if _, err := idemredis.New(rdb, cfg); !errors.Is(err, idemredis.ErrInvalidConfig) || !strings.HasPrefix(err.Error(), "idempotency/redis: ") {
			t.Fatalf("config %+v: %v, want ErrInvalidConfig naming the package", cfg, err)
		}
	}
}

// A record that is not the store's own (another program wrote the key) is an
// error, not a duplicate or a claim.
func TestForeignValue(t *testing.T) {
	ctx := context.Background()
	rdb, prefix := testenv.Redis(t)
	s, err := idemredis.New(rdb, idemredis.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	for key, v := range map[string]string{"junk": "xyz", "truncated": "D\x05ab", "empty": ""} {
		if err := rdb.Set(ctx, s.Key("scope", key), v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		lease, rec, err := s.Acquire(ctx, "scope", key, nil)
		if err == nil || lease != nil || rec != nil || errors.Is(err, idempotency.ErrInProgress) {
			t.Fatalf("foreign value %q: (%v, %+v, %v), want a plain error", v, lease, rec, err)
		}
	}
}
