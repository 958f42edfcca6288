package testkit_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/examples/testkit"
)

// env is an Environment with the given variables and Docker answer; it
// counts Docker probes.
func env(vars map[string]string, docker error, probes *int) testkit.Environment {
	return testkit.Environment{
		Getenv: func(k string) string { return vars[k] },
		Docker: func() error { *probes++; return docker },
	}
}

// TestChoose: the variable wins without probing Docker; then a container
// when Docker answers; then in-process (Kafka) or missing, a failure under
// STEADFAST_REQUIRE_BACKENDS and a skip otherwise.
func TestChoose(t *testing.T) {
	noDocker := errors.New("rootless Docker not found")
	for _, c := range []struct {
		name     string
		b        testkit.Backend
		vars     map[string]string
		docker   error
		want     testkit.Source
		probed   int
		required bool
	}{
		{"postgres from env", testkit.PostgreSQL, map[string]string{"STEADFAST_POSTGRES_URL": "postgres://x"}, noDocker, testkit.FromEnv, 0, false},
		{"blank env is unset", testkit.Redis, map[string]string{"STEADFAST_REDIS_URL": "  "}, nil, testkit.FromContainer, 1, false},
		{"rabbitmq container", testkit.RabbitMQ, nil, nil, testkit.FromContainer, 1, false},
		{"kafka from env", testkit.Kafka, map[string]string{"STEADFAST_KAFKA_BROKERS": "h:9092"}, nil, testkit.FromEnv, 0, false},
		{"kafka container", testkit.Kafka, nil, nil, testkit.FromContainer, 1, false},
		{"kafka in process", testkit.Kafka, map[string]string{"STEADFAST_REQUIRE_BACKENDS": "1"}, noDocker, testkit.InProcess, 1, true},
		{"postgres missing, skip", testkit.PostgreSQL, nil, noDocker, testkit.Missing, 1, false},
		{"redis missing, fail", testkit.Redis, map[string]string{"STEADFAST_REQUIRE_BACKENDS": "true"}, noDocker, testkit.Missing, 1, true},
		{"rabbitmq missing, not required", testkit.RabbitMQ, map[string]string{"STEADFAST_REQUIRE_BACKENDS": "0"}, noDocker, testkit.Missing, 1, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			probes := 0
			got := testkit.Choose(c.b, env(c.vars, c.docker, &probes))
			if got.Source != c.want || got.Required != c.required || got.Backend != c.b {
				t.Errorf("Choose = %+v, want source %s, required %v", got, c.want, c.required)
			}
			if probes != c.probed {
				t.Errorf("Docker probed %d times, want %d", probes, c.probed)
			}
			s := got.String()
			switch c.want {
			case testkit.FromEnv:
				if got.Value == "" || !strings.Contains(s, c.b.EnvVar()) {
					t.Errorf("env choice: value %q, description %q", got.Value, s)
				}
			case testkit.Missing:
				if !strings.Contains(got.Reason, "rootless Docker not found") || !strings.Contains(got.Reason, c.b.EnvVar()) {
					t.Errorf("missing choice reason %q lacks the variable or Docker's answer", got.Reason)
				}
				if c.required != strings.Contains(s, "fail") {
					t.Errorf("description %q does not say %v", s, map[bool]string{true: "fail", false: "skip"}[c.required])
				}
			}
		})
	}
}

// TestPostgres: the pool's schema has every steadfast table, migrating
// again is harmless, and two tests get different schemas.
func TestPostgres(t *testing.T) {
	t.Parallel()
	pg := testkit.Postgres(t)
	other := testkit.Postgres(t)
	if pg.Schema == other.Schema {
		t.Fatalf("two calls share schema %s", pg.Schema)
	}
	ctx := context.Background()
	if err := testkit.Migrate(ctx, pg.Pool); err != nil {
		t.Fatalf("second migrate: %v", err)
	}
	for _, table := range []string{"outbox", "steadfast_idempotency", "saga", "saga_history", "saga_participant", "saga_flow", "events"} {
		var n int
		err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2`,
			pg.Schema, table).Scan(&n)
		if err != nil || n != 1 {
			t.Errorf("table %s.%s: %d, %v", pg.Schema, table, n, err)
		}
	}
	if pg.Source != testkit.FromEnv && pg.Source != testkit.FromContainer {
		t.Errorf("source %q", pg.Source)
	}
}

// TestOthers: each getter hands out a working, isolated backend.
func TestOthers(t *testing.T) {
	t.Parallel()
	client, prefix := testkit.RedisClient(t)
	if err := client.Set(context.Background(), prefix+"k", "v", 0).Err(); err != nil {
		t.Errorf("redis: %v", err)
	}
	if u := testkit.RabbitMQURL(t); !strings.HasPrefix(u, "amqp") {
		t.Errorf("rabbitmq url %q", u)
	}
	if seeds := testkit.KafkaSeeds(t); len(seeds) == 0 {
		t.Errorf("no kafka seeds")
	}
	if a, b := testkit.Name(t, "orders"), testkit.Name(t, "orders"); a == b || !strings.HasPrefix(a, "orders_") {
		t.Errorf("names %q, %q", a, b)
	}
}
