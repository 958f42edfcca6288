// Package testkit gives your integration tests real backends with
// steadfast's schemas already migrated, each test in isolation: a fresh
// PostgreSQL schema, a Redis key prefix, unique RabbitMQ and Kafka names.
// Copy the orderflow example's test (examples/orderflow) to see it used.
//
//	func TestOrders(t *testing.T) {
//		pg := testkit.Postgres(t)             // pool on a fresh schema, tables migrated
//		seeds := testkit.Kafka(t)             // a Kafka-protocol cluster
//		...
//	}
//
// Each backend is found in this order (Choose says which, and why):
//
//  1. its STEADFAST_* variable (STEADFAST_POSTGRES_URL, STEADFAST_REDIS_URL,
//     STEADFAST_RABBITMQ_URL, STEADFAST_KAFKA_BROKERS) pointing at a running
//     server: CI and `make test` use these;
//  2. a testcontainers-go container when a Docker engine answers
//     (postgres:15, redis:7, rabbitmq:3.13, and Redpanda for Kafka), one per
//     backend per test process, removed when the process exits;
//  3. Kafka only: an in-process kfake cluster (the Kafka wire protocol in
//     memory), so Kafka tests never need anything installed.
//
// When none is available the test is skipped with a message saying how to
// provide one, or fails when STEADFAST_REQUIRE_BACKENDS=1: set it in CI, so a
// missing backend can never pass silently.
package testkit

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	esp "github.com/steadfast-go/steadfast/eventsource/postgres"
	idp "github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// Backend names a kind of server.
type Backend string

// The backends testkit provides.
const (
	PostgreSQL Backend = "postgres"
	Redis      Backend = "redis"
	RabbitMQ   Backend = "rabbitmq"
	Kafka      Backend = "kafka"
)

// EnvVar returns the variable that points at a running server of b.
func (b Backend) EnvVar() string {
	switch b {
	case PostgreSQL:
		return testenv.EnvPostgresURL
	case Redis:
		return testenv.EnvRedisURL
	case RabbitMQ:
		return testenv.EnvRabbitMQURL
	case Kafka:
		return testenv.EnvKafkaBrokers
	}
	return ""
}

// Source is where a backend comes from.
type Source string

// Sources, in the order they are tried.
const (
	FromEnv       Source = "environment"
	FromContainer Source = "container"
	InProcess     Source = "in-process"
	// Missing: no server can be had; the test is skipped, or fails when
	// Required.
	Missing Source = "missing"
)

// Environment is what the choice of a backend depends on. Zero fields read
// the real process environment and probe Docker.
type Environment struct {
	// Getenv reads a variable. Default os.Getenv.
	Getenv func(string) string
	// Docker reports why no Docker engine can be used, nil when one
	// answers. Default: a probe through testcontainers, once per process.
	Docker func() error
}

// Choice is where a backend will come from.
type Choice struct {
	Backend Backend
	Source  Source
	// Value is the variable's value when Source is FromEnv.
	Value string
	// Reason says why the sources before Source were not used.
	Reason string
	// Required is true when STEADFAST_REQUIRE_BACKENDS makes a Missing
	// backend a failure rather than a skip.
	Required bool
}

// String describes the choice in one line.
func (c Choice) String() string {
	switch c.Source {
	case FromEnv:
		return fmt.Sprintf("%s from %s", c.Backend, c.Backend.EnvVar())
	case Missing:
		verdict := "skip"
		if c.Required {
			verdict = "fail (" + testenv.EnvRequire + " is set)"
		}
		return fmt.Sprintf("%s missing: %s; %s", c.Backend, c.Reason, verdict)
	}
	return fmt.Sprintf("%s %s: %s", c.Backend, c.Source, c.Reason)
}

// Choose decides where backend b comes from in env, without connecting to
// anything: the variable when set (Docker is not probed), else a container
// when Docker answers, else in-process (Kafka) or Missing.
func Choose(b Backend, env Environment) Choice {
	getenv := env.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	docker := env.Docker
	if docker == nil {
		docker = testenv.DockerUnavailable
	}
	req := getenv(testenv.EnvRequire)
	c := Choice{Backend: b, Required: req == "1" || strings.EqualFold(req, "true")}
	if v := strings.TrimSpace(getenv(b.EnvVar())); v != "" {
		c.Source, c.Value = FromEnv, v
		return c
	}
	err := docker()
	if err == nil {
		c.Source, c.Reason = FromContainer, b.EnvVar()+" is not set and a Docker engine answers"
		return c
	}
	c.Reason = fmt.Sprintf("%s is not set and Docker is not available (%v)", b.EnvVar(), err)
	if b == Kafka {
		c.Source = InProcess
		return c
	}
	c.Source = Missing
	return c
}

// require ends the test when b is missing, and returns the choice.
func require(t testing.TB, b Backend) Choice {
	t.Helper()
	c := Choose(b, Environment{})
	if c.Source == Missing {
		testenv.Unavailable(t, string(b), c.Reason)
	}
	return c
}

// PG is a PostgreSQL database for one test.
type PG struct {
	// Pool's connections use Schema as their search_path; it is closed at
	// the test's cleanup, then the schema is dropped.
	Pool *pgxpool.Pool
	// URL opens more connections on the same schema (another process of
	// the system under test, say).
	URL    string
	Schema string
	Source Source
}

// Postgres returns a pool on a fresh schema in which steadfast's tables are
// migrated under their default names: the outbox ("outbox"), idempotency
// keys ("idempotency_keys"... see idempotency/postgres), sagas ("saga",
// "saga_participant", "saga_flow") and the event store ("events"). Code
// under test that uses the default table names (or the pool's search_path)
// finds them.
func Postgres(t testing.TB) *PG {
	t.Helper()
	c := require(t, PostgreSQL)
	pool, url, schema := testenv.PostgresDB(t)
	if pool == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := Migrate(ctx, pool); err != nil {
		t.Fatalf("testkit: %v", err)
	}
	return &PG{Pool: pool, URL: url, Schema: schema, Source: c.Source}
}

// Migrate creates steadfast's tables under their default names in db's
// search_path (idempotent): what Postgres does for a test.
func Migrate(ctx context.Context, db *pgxpool.Pool) error {
	for _, m := range []struct {
		what string
		fn   func() error
	}{
		{"outbox", func() error { return outboxpg.Migrate(ctx, db, "") }},
		{"idempotency", func() error { return idp.Migrate(ctx, db, "") }},
		{"saga", func() error { return sagapg.Migrate(ctx, db, "") }},
		{"saga participants", func() error { return sagapg.MigrateParticipants(ctx, db, "") }},
		{"saga flows", func() error { return sagapg.MigrateFlows(ctx, db, "") }},
		{"event store", func() error { return esp.Migrate(ctx, db, "") }},
	} {
		if err := m.fn(); err != nil {
			return fmt.Errorf("migrate %s: %w", m.what, err)
		}
	}
	return nil
}

// RedisClient returns a client and a key prefix unique to this call; every
// key under the prefix is deleted at the test's cleanup. Give the prefix to
// steadfast's Redis stores (their KeyPrefix setting).
func RedisClient(t testing.TB) (*redis.Client, string) {
	t.Helper()
	require(t, Redis)
	return testenv.Redis(t)
}

// RabbitMQURL returns the amqp:// URL of a RabbitMQ node shared by the
// tests; name exchanges and queues with Name.
func RabbitMQURL(t testing.TB) string {
	t.Helper()
	require(t, RabbitMQ)
	return testenv.RabbitMQURL(t)
}

// KafkaSeeds returns the seed brokers of a Kafka-protocol cluster: the
// configured one, a Redpanda container, or an in-process kfake cluster of
// the test's own. Name topics and groups with Name.
func KafkaSeeds(t testing.TB) []string {
	t.Helper()
	switch c := require(t, Kafka); c.Source {
	case FromContainer:
		seeds, err := redpanda.start()
		if err != nil {
			testenv.Unavailable(t, "kafka", fmt.Sprintf("the Redpanda container did not start: %v", err))
			return nil
		}
		return seeds
	default:
		return testenv.Kafka(t)
	}
}

// Name returns a name unique to this call for topics, groups, queues,
// tables or key prefixes: lowercase letters, digits and '_', at most 48
// characters, starting with prefix and the test's name.
func Name(t testing.TB, prefix string) string { return testenv.Name(t, prefix) }
