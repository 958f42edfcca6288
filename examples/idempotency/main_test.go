package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// check runs the example and verifies what it prints.
func check(t *testing.T, be backends, want ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, be); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	want = append(want,
		"order-1: 2 deliveries dropped as duplicates, card charged 1 time(s)",
		"order-2: 0 deliveries dropped as duplicates, card charged 2 time(s)",
		`POST /orders, key K                -> 201 "order 1 created"`+"\n",
		`POST /orders, key K again (retry)  -> 201 "order 1 created" (replayed)`,
		"POST /orders, key K, other body    -> 422",
		"POST /orders, no key               -> 400",
		"orders created by the handler: 1",
	)
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("output lacks %q:\n%s", w, s)
		}
	}
	return s
}

func TestIdempotencyMemory(t *testing.T) {
	t.Parallel()
	check(t, backends{}, "dedup store: memory", "broker: memory", "skipped: set STEADFAST_POSTGRES_URL")
}

func TestIdempotencyBackends(t *testing.T) {
	t.Parallel()
	_, prefix := testenv.Redis(t) // its keys are deleted at cleanup
	be := backends{postgresURL: testenv.PostgresURL(t), redisURL: testenv.RedisURL(t), redisPrefix: prefix, rabbitmqURL: testenv.RabbitMQURL(t)}
	want := []string{
		"dedup store: redis",
		"broker: rabbitmq",
		"order-1: 2 deliveries dropped as duplicates, 1 charge row(s)",
		"order-2: 0 deliveries dropped as duplicates, 1 charge row(s)",
	}
	s := check(t, be, want...)
	if strings.Contains(s, "skipped") {
		t.Errorf("a part was skipped on real backends:\n%s", s)
	}
	// A second run on the same tables and server works too.
	check(t, be, want...)
}

func TestIdempotencyKafkaPostgres(t *testing.T) {
	t.Parallel()
	be := backends{postgresURL: testenv.PostgresURL(t), kafkaBrokers: strings.Join(testenv.Kafka(t), ",")}
	check(t, be, "dedup store: memory", "broker: kafka",
		"order-1: 2 deliveries dropped as duplicates, 1 charge row(s)",
		"order-2: 0 deliveries dropped as duplicates, 1 charge row(s)")
}
