package testkit_test

import (
	"errors"
	"fmt"

	"github.com/steadfast-go/steadfast/examples/testkit"
)

// Where each backend comes from on a machine where only PostgreSQL is
// configured and no Docker engine runs, in CI (STEADFAST_REQUIRE_BACKENDS).
func ExampleChoose() {
	vars := map[string]string{
		"STEADFAST_POSTGRES_URL":     "postgres://postgres@127.0.0.1:5432/postgres",
		"STEADFAST_REQUIRE_BACKENDS": "1",
	}
	env := testkit.Environment{
		Getenv: func(k string) string { return vars[k] },
		Docker: func() error { return errors.New("rootless Docker not found") },
	}
	for _, b := range []testkit.Backend{testkit.PostgreSQL, testkit.Redis, testkit.Kafka} {
		fmt.Println(testkit.Choose(b, env))
	}
	// Output:
	// postgres from STEADFAST_POSTGRES_URL
	// redis missing: STEADFAST_REDIS_URL is not set and Docker is not available (rootless Docker not found); fail (STEADFAST_REQUIRE_BACKENDS is set)
	// kafka in-process: STEADFAST_KAFKA_BROKERS is not set and Docker is not available (rootless Docker not found)
}
