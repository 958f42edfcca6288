package testenv

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

var pgContainer = &containerService{
	request: func() testcontainers.ContainerRequest {
		return testcontainers.ContainerRequest{
			Image:        "postgres:15",
			ExposedPorts: []string{"5432/tcp"},
			Env: map[string]string{
				"POSTGRES_PASSWORD": "steadfast",
				"POSTGRES_DB":       "steadfast",
			},
			Cmd: []string{"postgres",
				"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
				"-c", "max_connections=300"},
			WaitingFor: wait.ForAll(
				// The entrypoint starts a temporary server first: wait for the real one.
				wait.ForLog("database system is ready to accept connections").WithOccurrence(2),
				wait.ForListeningPort("5432/tcp"),
			).WithDeadline(3 * time.Minute),
		}
	},
	port: "5432/tcp",
	url: func(hostport string) string {
		return "postgres://postgres:steadfast@" + hostport + "/steadfast?sslmode=disable"
	},
}

// pgAdmin holds one small pool per server URL, used to create and drop test
// schemas. It lives as long as the test process.
var pgAdmin struct {
	mu    sync.Mutex
	pools map[string]*pgxpool.Pool
}

func pgAdminPool(base string) (*pgxpool.Pool, error) {
	pgAdmin.mu.Lock()
	defer pgAdmin.mu.Unlock()
	if p := pgAdmin.pools[base]; p != nil {
		return p, nil
	}
	cfg, err := pgxpool.ParseConfig(base)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 4
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	if pgAdmin.pools == nil {
		pgAdmin.pools = make(map[string]*pgxpool.Pool)
	}
	pgAdmin.pools[base] = pool
	return pool, nil
}

// PostgresURL returns a connection string for a PostgreSQL database whose
// search_path is a schema created for this call and dropped (CASCADE) at t's
// cleanup, so unqualified tables a test creates are its own. The schema is
// set through the libpq-compatible `options=-c search_path=<schema>`
// parameter, so every connection and pool opened from the URL uses it (pgx,
// psql). Only the schema is on the search_path: objects in `public` are not
// visible unqualified. Server-wide objects (LISTEN/NOTIFY channels, advisory
// locks, roles) are not isolated.
//
// The server comes from STEADFAST_POSTGRES_URL, else a postgres:15 container
// when Docker answers, else the test is skipped (failed under Require). A
// server that is configured but does not answer fails the test.
func PostgresURL(t testing.TB) string {
	t.Helper()
	u, _ := postgresSchema(t)
	return u
}

// Postgres returns a *pgxpool.Pool whose connections use a fresh schema (see
// PostgresURL). The pool is closed, then the schema dropped, at t's cleanup.
func Postgres(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, _, _ := PostgresDB(t)
	return pool
}

// PostgresDB is Postgres that also returns the URL the pool was opened from
// (see PostgresURL) and the name of the test's schema, for tests that need a
// second pool or connection on the same schema, or that qualify names.
func PostgresDB(t testing.TB) (pool *pgxpool.Pool, url, schema string) {
	t.Helper()
	url, schema = postgresSchema(t)
	if url == "" {
		return nil, "", ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, url)
	if err == nil {
		err = pool.Ping(ctx)
		if err != nil {
			pool.Close()
		}
	}
	if err != nil {
		t.Fatalf("testenv: postgres: open pool on schema %s: %v", schema, err)
		return nil, "", ""
	}
	t.Cleanup(pool.Close)
	return pool, url, schema
}

// PostgresSchema returns the schema a URL from PostgresURL or PostgresDB sets
// as its search_path (the last `-c search_path=` in its options, or a
// search_path parameter), or "" if it sets none.
func PostgresSchema(connString string) string {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return ""
	}
	schema := cfg.RuntimeParams["search_path"]
	fields := strings.Fields(cfg.RuntimeParams["options"])
	for i, f := range fields {
		switch {
		case f == "-c" && i+1 < len(fields) && strings.HasPrefix(fields[i+1], "search_path="):
			schema = strings.TrimPrefix(fields[i+1], "search_path=")
		case strings.HasPrefix(f, "-csearch_path="):
			schema = strings.TrimPrefix(f, "-csearch_path=")
		case strings.HasPrefix(f, "--search_path="):
			schema = strings.TrimPrefix(f, "--search_path=")
		}
	}
	return schema
}

// postgresSchema creates the test's schema and returns a URL using it.
func postgresSchema(t testing.TB) (string, string) {
	t.Helper()
	base, fromEnv, _ := backendURL(t, "postgres", EnvPostgresURL, pgContainer)
	if base == "" {
		return "", ""
	}
	where := "the testcontainers postgres"
	if fromEnv {
		where = EnvPostgresURL + "=" + redactPostgres(base)
	}
	admin, err := pgAdminPool(base)
	if err != nil {
		t.Fatalf("testenv: postgres: cannot connect to %s: %v", where, err)
		return "", ""
	}
	schema := Name(t, "t")
	ident := pgx.Identifier{schema}.Sanitize()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		t.Fatalf("testenv: postgres: create schema %s on %s: %v", schema, where, err)
		return "", ""
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		err := pgx.BeginFunc(ctx, admin, func(tx pgx.Tx) error {
			// Do not hang the suite on a connection the test leaked.
			if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '30s'"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE")
			return err
		})
		if err != nil {
			t.Logf("testenv: postgres: could not drop schema %s: %v", schema, err)
		}
	})
	u, err := withSearchPath(base, schema)
	if err != nil {
		t.Fatalf("testenv: postgres: %s: %v", where, err)
		return "", ""
	}
	return u, schema
}

// withSearchPath adds `-c search_path=<schema>` to the connection string's
// options, in URL or keyword/value form.
func withSearchPath(base, schema string) (string, error) {
	opt := "-c search_path=" + schema
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			return "", fmt.Errorf("parse connection URL: %w", err)
		}
		q := u.Query()
		if o := strings.TrimSpace(q.Get("options")); o != "" {
			opt = o + " " + opt
		}
		q.Set("options", opt)
		// libpq decodes %20 but not '+'; Encode writes a literal '+' as %2B,
		// so every '+' it emits is a space.
		u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
		return u.String(), nil
	}
	cfg, err := pgconn.ParseConfig(base)
	if err != nil {
		return "", fmt.Errorf("parse connection string: %w", err)
	}
	if o := strings.TrimSpace(cfg.RuntimeParams["options"]); o != "" {
		opt = o + " " + opt
	}
	// In keyword/value form the last occurrence of a keyword wins.
	esc := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(opt)
	return strings.TrimSpace(base) + " options='" + esc + "'", nil
}

// redactPostgres hides the password in a connection string for messages.
func redactPostgres(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(connection string)"
}
