// Package testenv gives steadfast's tests real backends: PostgreSQL, Redis,
// RabbitMQ and a Kafka-protocol broker, each isolated per test so tests can
// run in parallel.
//
// Every backend is resolved in the same order:
//
//  1. an environment variable pointing at a running server:
//     STEADFAST_POSTGRES_URL, STEADFAST_REDIS_URL, STEADFAST_RABBITMQ_URL
//     (plus STEADFAST_RABBITMQ_CTL for [RestartRabbitMQ]) and
//     STEADFAST_KAFKA_BROKERS. `make test` starts local servers with
//     internal/testenv/services.sh and exports these. When the variable is set
//     nothing else is tried (no Docker probe), and a server that does not
//     answer fails the test: the variable said it would be there.
//  2. testcontainers-go, when a Docker daemon answers (probed once per test
//     process, with a short timeout): one container per backend per test
//     process (postgres:15, redis:7, rabbitmq:3.13), removed by
//     testcontainers' reaper when the process exits. Kafka skips this step.
//  3. Kafka only: an in-process franz-go kfake cluster per test (the real
//     Kafka wire protocol, with transactions and consumer groups), closed at
//     test cleanup. Real Kafka is reached with STEADFAST_KAFKA_BROKERS; a
//     Kafka container is not used because kfake is faster, needs nothing,
//     and [KafkaCluster] exposes it for failure injection.
//
// If a backend cannot be had, the test is skipped, unless
// STEADFAST_REQUIRE_BACKENDS=1 (set by `make test` and CI), where it fails:
// see [Unavailable].
//
// Isolation: each call to [PostgresURL] / [Postgres] / [PostgresDB] creates a
// fresh schema (dropped at cleanup), [Redis] hands out a unique key prefix
// (its keys deleted at cleanup), and RabbitMQ and Kafka tests name their
// exchanges, queues and topics with [Name]. Server-wide state is shared:
// Postgres LISTEN/NOTIFY channels and advisory locks, Redis pub/sub channels,
// RabbitMQ's node. Name those with [Name] too.
package testenv

import (
	"crypto/rand"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Environment variables read by this package.
const (
	// EnvRequire, when "1" (or "true"), turns every unavailable backend into
	// a test failure instead of a skip.
	EnvRequire = "STEADFAST_REQUIRE_BACKENDS"
	// EnvPostgresURL is a PostgreSQL connection string (URL or key=value).
	EnvPostgresURL = "STEADFAST_POSTGRES_URL"
	// EnvRedisURL is a redis:// URL.
	EnvRedisURL = "STEADFAST_REDIS_URL"
	// EnvRabbitMQURL is an amqp:// URL.
	EnvRabbitMQURL = "STEADFAST_RABBITMQ_URL"
	// EnvRabbitMQCtl is a command line (run with sh -c) that runs rabbitmqctl
	// against the node behind EnvRabbitMQURL; used by RestartRabbitMQ.
	EnvRabbitMQCtl = "STEADFAST_RABBITMQ_CTL"
	// EnvKafkaBrokers is a comma-separated list of seed brokers (host:port).
	EnvKafkaBrokers = "STEADFAST_KAFKA_BROKERS"
)

// Require reports whether STEADFAST_REQUIRE_BACKENDS is set to 1 (or another
// true value understood by strconv.ParseBool). When it is, a backend that is
// not available fails the test instead of skipping it.
func Require() bool {
	v, err := strconv.ParseBool(strings.TrimSpace(os.Getenv(EnvRequire)))
	return err == nil && v
}

// Unavailable ends the test because backend cannot be reached: it skips the
// test (t.Skip), or fails it (t.Fatalf) when Require() is true. The message
// names the backend, the reason, and how to provide it (`make test`, or the
// STEADFAST_* variable for that backend). Like t.Skip and t.Fatal it does not
// return when t is a *testing.T or *testing.B.
func Unavailable(t testing.TB, backend, reason string) {
	t.Helper()
	msg := fmt.Sprintf("testenv: %s unavailable: %s; run `make test` (starts local servers) or set %s, or start a Docker daemon for testcontainers",
		backend, reason, envHint(backend))
	if Require() {
		t.Fatalf("%s [%s=1 makes a missing backend a failure]", msg, EnvRequire)
		return
	}
	t.Skip(msg)
}

func envHint(backend string) string {
	switch strings.ToLower(backend) {
	case "postgres", "postgresql", "pg":
		return EnvPostgresURL + " (e.g. postgres://postgres@127.0.0.1:31432/steadfast?sslmode=disable)"
	case "redis":
		return EnvRedisURL + " (e.g. redis://127.0.0.1:31379/0)"
	case "rabbitmq", "rabbit", "amqp":
		return EnvRabbitMQURL + " (e.g. amqp://guest:guest@127.0.0.1:31672/)"
	case "rabbitmq restart", "rabbitmqctl":
		return EnvRabbitMQCtl + " (a command line running rabbitmqctl against that node, e.g. .services/rabbitmqctl)"
	case "kafka":
		return EnvKafkaBrokers + " (e.g. 127.0.0.1:9092)"
	default:
		return "the STEADFAST_* variable for it"
	}
}

// maxNameLen bounds Name's result: short enough for every backend's limits
// (Postgres identifiers stop at 63 bytes) with room for a caller's suffix.
const maxNameLen = 48

const suffixLen = 8

// Name returns a name unique to this call, made for t: the sanitized prefix,
// a shortened form of t.Name(), and a random suffix, joined by '_'. It is at
// most 48 characters of [a-z0-9_] and starts with a letter, so it is valid
// unquoted as a Postgres schema or table name, and as a Kafka topic, a
// RabbitMQ exchange or queue, or a Redis key prefix. An empty or non-letter
// prefix is replaced or preceded by "t".
func Name(t testing.TB, prefix string) string {
	p := sanitize(prefix)
	if p == "" || p[0] < 'a' || p[0] > 'z' {
		p = "t" + p
	}
	if limit := maxNameLen - suffixLen - 1; len(p) > limit {
		p = strings.TrimRight(p[:limit], "_")
	}
	n := sanitize(strings.TrimPrefix(t.Name(), "Test"))
	budget := maxNameLen - len(p) - suffixLen - 2 // two '_' separators
	switch {
	case budget <= 1:
		n = ""
	case len(n) > budget:
		// Keep the start (the test function) and the end (the subtest).
		head := budget / 2
		tail := budget - head - 1
		n = strings.TrimRight(n[:head], "_") + "_" + strings.TrimLeft(n[len(n)-tail:], "_")
	}
	parts := []string{p}
	if n = strings.Trim(n, "_"); n != "" {
		parts = append(parts, n)
	}
	parts = append(parts, randomSuffix())
	return strings.Join(parts, "_")
}

// sanitize lower-cases s and turns every run of characters outside [a-z0-9]
// into one '_', trimming '_' at both ends.
func sanitize(s string) string {
	var b strings.Builder
	underscore := false
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			underscore = false
			continue
		}
		if !underscore && b.Len() > 0 {
			b.WriteByte('_')
			underscore = true
		}
	}
	return strings.TrimRight(b.String(), "_")
}

func randomSuffix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var buf [suffixLen]byte
	if _, err := rand.Read(buf[:]); err != nil {
		panic(fmt.Sprintf("testenv: crypto/rand: %v", err)) // never happens on supported platforms
	}
	for i, c := range buf {
		buf[i] = alphabet[int(c)%len(alphabet)]
	}
	return string(buf[:])
}
