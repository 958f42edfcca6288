package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

var redisContainer = &containerService{
	request: func() testcontainers.ContainerRequest {
		return testcontainers.ContainerRequest{
			Image:        "redis:7",
			ExposedPorts: []string{"6379/tcp"},
			Cmd:          []string{"redis-server", "--save", "", "--appendonly", "no"},
			WaitingFor: wait.ForAll(
				wait.ForLog("Ready to accept connections"),
				wait.ForListeningPort("6379/tcp"),
			).WithDeadline(2 * time.Minute),
		}
	},
	port: "6379/tcp",
	url:  func(hostport string) string { return "redis://" + hostport + "/0" },
}

// RedisURL returns the redis:// URL of a Redis server shared by all tests:
// STEADFAST_REDIS_URL, else a redis:7 container when Docker answers, else the
// test is skipped (failed under Require). Tests that use the URL directly
// must keep their keys (and pub/sub channels) under a prefix from Name; Redis
// does that and cleans up.
func RedisURL(t testing.TB) string {
	t.Helper()
	u, _, _ := backendURL(t, "redis", EnvRedisURL, redisContainer)
	return u
}

// Redis returns a client for the server behind RedisURL and a key prefix
// unique to this call (Name(t, "t") + ":"). At t's cleanup every key starting
// with the prefix is deleted (SCAN MATCH prefix* + UNLINK) and the client is
// closed. A server that does not answer PING fails the test.
func Redis(t testing.TB) (*redis.Client, string) {
	t.Helper()
	u := RedisURL(t)
	if u == "" {
		return nil, ""
	}
	opts, err := redis.ParseURL(u)
	if err != nil {
		t.Fatalf("testenv: redis: parse %s: %v", EnvRedisURL, err)
		return nil, ""
	}
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		t.Fatalf("testenv: redis: cannot reach %s: %v", opts.Addr, err)
		return nil, ""
	}
	prefix := Name(t, "t") + ":"
	t.Cleanup(func() {
		defer client.Close()
		if err := deletePrefix(client, prefix); err != nil {
			t.Logf("testenv: redis: could not delete keys %s*: %v", prefix, err)
		}
	})
	return client, prefix
}

// deletePrefix removes every key that starts with prefix. prefix comes from
// Name, so it holds no glob metacharacters.
func deletePrefix(client *redis.Client, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var batch []string
	iter := client.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 1000 {
			if err := client.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		return client.Unlink(ctx, batch...).Err()
	}
	return nil
}
