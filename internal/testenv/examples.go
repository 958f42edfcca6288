package testenv

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
)

// Examples that need a server. A package's runnable Examples (with
// // Output:) that need PostgreSQL or Redis get it from ExamplePostgres or
// ExampleRedis, resolved like a test's backend (the variable, else a
// container) and isolated the same way (a fresh schema, a key prefix). The
// package's TestMain calls MainWithExamples, which decides before any
// Example runs: with the backend, they run; without it, they are skipped
// with a message, or, under STEADFAST_REQUIRE_BACKENDS=1, the package fails.
// An Example cannot skip itself once it has started, hence the decision
// up front.

// examples holds the cleanups of the Examples' backends, run after m.Run.
var examples struct {
	mu       sync.Mutex
	cleanups []func()
}

// MainWithExamples runs m for a package whose Examples named in names need
// backend ("postgres" or "redis") and returns the exit code for os.Exit:
//
//	func TestMain(m *testing.M) {
//		os.Exit(testenv.MainWithExamples(m, "postgres", "Example", "ExampleStore_Claim"))
//	}
//
// The backend is available when its variable is set (a server that then
// does not answer fails the Example) or when Docker answers.
func MainWithExamples(m *testing.M, backend string, names ...string) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	if reason := exampleBackendMissing(backend); reason != "" {
		msg := fmt.Sprintf("testenv: %s unavailable for %s: %s; run `make test` or set %s", backend,
			strings.Join(names, ", "), reason, envHint(backend))
		if Require() {
			fmt.Fprintf(os.Stderr, "%s [%s=1 makes a missing backend a failure]\n", msg, EnvRequire)
			return 1
		}
		fmt.Fprintf(os.Stderr, "%s; skipping them\n", msg)
		if err := skipExamples(names); err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
			return 1
		}
	}
	code := m.Run()
	examples.mu.Lock()
	cleanups := examples.cleanups
	examples.cleanups = nil
	examples.mu.Unlock()
	for i := len(cleanups) - 1; i >= 0; i-- {
		cleanups[i]()
	}
	return code
}

// exampleBackendMissing says why backend cannot be had, or "" when it can.
func exampleBackendMissing(backend string) string {
	env := map[string]string{"postgres": EnvPostgresURL, "redis": EnvRedisURL}[backend]
	if env == "" {
		return "unknown backend " + backend
	}
	if os.Getenv(env) != "" {
		return ""
	}
	if err := dockerUnavailable(); err != nil {
		return env + " is not set and Docker does not answer (" + err.Error() + ")"
	}
	return ""
}

// skipExamples adds names to the -test.skip pattern.
func skipExamples(names []string) error {
	f := flag.Lookup("test.skip")
	if f == nil {
		return fmt.Errorf("no -test.skip flag: not a test binary")
	}
	pattern := "^(" + strings.Join(names, "|") + ")$"
	if old := f.Value.String(); old != "" {
		pattern = old + "|" + pattern
	}
	return f.Value.Set(pattern)
}

// ExamplePostgres returns a pool on a fresh schema (see Postgres) for an
// Example; the schema is dropped after the package's Examples ran. A
// failure panics, which fails the Example with the reason.
func ExamplePostgres() *pgxpool.Pool {
	return Postgres(exampleTB{})
}

// ExampleRedis returns a client and a key prefix (see Redis) for an
// Example; the keys are deleted after the package's Examples ran.
func ExampleRedis() (*redis.Client, string) {
	return Redis(exampleTB{})
}

// exampleTB is the testing.TB of an Example: cleanups run after m.Run, and
// a failure panics. Methods testenv does not use are left to the embedded
// nil interface (calling one panics).
type exampleTB struct{ testing.TB }

func (exampleTB) Helper()      {}
func (exampleTB) Name() string { return "Example" }
func (exampleTB) Cleanup(f func()) {
	examples.mu.Lock()
	defer examples.mu.Unlock()
	examples.cleanups = append(examples.cleanups, f)
}
func (exampleTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (exampleTB) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
func (exampleTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (exampleTB) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (exampleTB) Skip(args ...any)                  { panic(fmt.Sprint(args...)) }
func (exampleTB) Skipf(format string, args ...any)  { panic(fmt.Sprintf(format, args...)) }
