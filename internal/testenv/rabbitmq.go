package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/testcontainers/testcontainers-go"
	tcexec "github.com/testcontainers/testcontainers-go/exec"
	"github.com/testcontainers/testcontainers-go/wait"
)

var rabbitContainer = &containerService{
	request: func() testcontainers.ContainerRequest {
		return testcontainers.ContainerRequest{
			Image:        "rabbitmq:3.13",
			ExposedPorts: []string{"5672/tcp"},
			// guest may only log in from localhost, which a mapped port is not.
			Env: map[string]string{
				"RABBITMQ_DEFAULT_USER": "steadfast",
				"RABBITMQ_DEFAULT_PASS": "steadfast",
			},
			WaitingFor: wait.ForAll(
				wait.ForLog("Server startup complete"),
				wait.ForListeningPort("5672/tcp"),
			).WithDeadline(3 * time.Minute),
		}
	},
	port: "5672/tcp",
	url:  func(hostport string) string { return "amqp://steadfast:steadfast@" + hostport + "/" },
}

// How long RabbitMQ helpers wait: for other tests to stop using the node
// before a restart, and for each step of a restart.
const (
	rabbitExclusiveWait = 15 * time.Minute
	rabbitStepTimeout   = 2 * time.Minute
)

// RabbitMQURL returns the amqp:// URL of a RabbitMQ node shared by all tests:
// STEADFAST_RABBITMQ_URL, else a rabbitmq:3.13 container when Docker answers,
// else the test is skipped (failed under Require). Tests isolate themselves
// by naming exchanges and queues with Name and deleting them when done.
//
// Until t's cleanup, t holds a shared lease on the node (a file lock, so it
// spans test processes): RestartRabbitMQ in another test waits for every
// lease to end, so no test sees the node restart unless it restarts it
// itself. Calling RabbitMQURL blocks while another test restarts the node. A
// configured node that does not accept TCP connections fails the test.
func RabbitMQURL(t testing.TB) string {
	t.Helper()
	u, _, _ := rabbitResolve(t)
	return u
}

func rabbitResolve(t testing.TB) (string, bool, testcontainers.Container) {
	t.Helper()
	u, fromEnv, ctr := backendURL(t, "rabbitmq", EnvRabbitMQURL, rabbitContainer)
	if u == "" {
		return "", false, nil
	}
	rabbitShare(t, u)
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatalf("testenv: rabbitmq: parse %s: %v", EnvRabbitMQURL, err)
		return "", false, nil
	}
	hostport := net.JoinHostPort(uri.Host, fmt.Sprint(uri.Port))
	if err := dialCheck(hostport, 10*time.Second); err != nil {
		t.Fatalf("testenv: rabbitmq: cannot reach %s: %v", hostport, err)
		return "", false, nil
	}
	return u, fromEnv, ctr
}

// RestartRabbitMQ stops and starts the RabbitMQ application on the node behind
// RabbitMQURL (rabbitmqctl stop_app, then start_app), and returns once the
// node has booted (await_startup, retried) and accepts AMQP connections
// again. Every open connection to the node is closed by the restart; durable
// exchanges, queues, bindings and persistent messages survive it.
//
// It first waits until no other test, in this or another test process, holds
// a lease from RabbitMQURL (t's own lease, and its parent tests', are set
// aside), so only t observes the restart; call it from a test that can wait.
// With a server from STEADFAST_RABBITMQ_URL it runs STEADFAST_RABBITMQ_CTL
// (with sh -c); when that is unset the test is Unavailable. With a
// testcontainers node it runs rabbitmqctl inside the container.
func RestartRabbitMQ(t testing.TB) {
	t.Helper()
	u, fromEnv, ctr := rabbitResolve(t)
	if u == "" {
		return
	}
	var ctl func(ctx context.Context, args ...string) (string, error)
	switch {
	case ctr != nil:
		ctl = func(ctx context.Context, args ...string) (string, error) {
			code, r, err := ctr.Exec(ctx, append([]string{"rabbitmqctl"}, args...), tcexec.Multiplexed())
			var out []byte
			if r != nil {
				out, _ = io.ReadAll(r)
			}
			if err == nil && code != 0 {
				err = fmt.Errorf("exit status %d", code)
			}
			return string(out), err
		}
	case fromEnv:
		line := strings.TrimSpace(os.Getenv(EnvRabbitMQCtl))
		if line == "" {
			Unavailable(t, "rabbitmq restart", EnvRabbitMQURL+" is set but "+EnvRabbitMQCtl+" is not, so the node cannot be restarted")
			return
		}
		ctl = func(ctx context.Context, args ...string) (string, error) {
			cmd := exec.CommandContext(ctx, "/bin/sh", append([]string{"-c", line + ` "$@"`, "sh"}, args...)...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.WaitDelay = 5 * time.Second
			err := cmd.Run()
			return out.String(), err
		}
	default:
		t.Fatalf("testenv: rabbitmq restart: no way to reach rabbitmqctl for %s", u)
		return
	}

	release := rabbitExclusive(t, u)
	defer release()

	run := func(timeout time.Duration, args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := ctl(ctx, args...)
		if err != nil {
			return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out))
		}
		return nil
	}
	if err := run(rabbitStepTimeout, "stop_app"); err != nil {
		// The app may be half-stopped: try to bring it back for other tests.
		_ = run(rabbitStepTimeout, "start_app")
		t.Fatalf("testenv: rabbitmq restart: %v", err)
		return
	}
	if err := run(rabbitStepTimeout, "start_app"); err != nil {
		t.Fatalf("testenv: rabbitmq restart: %v", err)
		return
	}
	if err := rabbitAwait(run, u); err != nil {
		t.Fatalf("testenv: rabbitmq restart: %v", err)
	}
}

// rabbitAwait retries `rabbitmqctl await_startup` (it fails at once while the
// node is not yet reachable) and then dials AMQP until a connection opens.
func rabbitAwait(run func(time.Duration, ...string) error, u string) error {
	deadline := time.Now().Add(rabbitStepTimeout)
	var err error
	for {
		if err = run(30*time.Second, "await_startup", "--timeout", "30"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	for {
		conn, err := amqp.DialConfig(u, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node started but AMQP connections fail: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Leases on a RabbitMQ node: a lock file per node URL in os.TempDir, locked
// shared by each test using the node and exclusively by a restart.

type rabbitLeaseKey struct {
	tb   testing.TB
	path string
}

type rabbitLease struct {
	name string // t.Name() of the holder
	f    *os.File
}

var rabbitLeases struct {
	mu   sync.Mutex
	held map[rabbitLeaseKey]*rabbitLease
}

func rabbitLockPath(u string) string {
	sum := sha256.Sum256([]byte(u))
	return filepath.Join(os.TempDir(), "steadfast-rabbitmq-"+hex.EncodeToString(sum[:8])+".lock")
}

func openLockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	_ = os.Chmod(path, 0o666) // let other users' test runs share it; best effort
	return f, nil
}

// rabbitShare gives t a shared lease on the node until t's cleanup. Locking
// problems (an odd file system) only cost the coordination: they are logged.
func rabbitShare(t testing.TB, u string) {
	t.Helper()
	key := rabbitLeaseKey{t, rabbitLockPath(u)}
	rabbitLeases.mu.Lock()
	_, ok := rabbitLeases.held[key]
	rabbitLeases.mu.Unlock()
	if ok {
		return
	}
	f, err := openLockFile(key.path)
	if err == nil {
		err = flockWait(f, lockShared, rabbitExclusiveWait)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		t.Logf("testenv: rabbitmq: no lease on %s (restarts by other tests are not fenced off): %v", key.path, err)
		return
	}
	rabbitLeases.mu.Lock()
	if _, ok := rabbitLeases.held[key]; ok { // another goroutine of t won
		rabbitLeases.mu.Unlock()
		f.Close()
		return
	}
	if rabbitLeases.held == nil {
		rabbitLeases.held = make(map[rabbitLeaseKey]*rabbitLease)
	}
	rabbitLeases.held[key] = &rabbitLease{name: t.Name(), f: f}
	rabbitLeases.mu.Unlock()
	t.Cleanup(func() {
		rabbitLeases.mu.Lock()
		l := rabbitLeases.held[key]
		delete(rabbitLeases.held, key)
		rabbitLeases.mu.Unlock()
		if l != nil {
			l.f.Close() // releases the lock
		}
	})
}

// rabbitExclusive sets aside the leases of t and its parent tests, waits
// for an exclusive lock on the node and returns a function that releases it
// and restores the set-aside leases.
func rabbitExclusive(t testing.TB, u string) (release func()) {
	t.Helper()
	path := rabbitLockPath(u)
	name := t.Name()
	var aside []*rabbitLease
	rabbitLeases.mu.Lock()
	for k, l := range rabbitLeases.held {
		if k.path == path && (l.name == name || strings.HasPrefix(name, l.name+"/")) {
			_ = flockUnlock(l.f)
			aside = append(aside, l)
		}
	}
	rabbitLeases.mu.Unlock()
	restore := func() {
		for _, l := range aside {
			if err := flockWait(l.f, lockShared, rabbitExclusiveWait); err != nil {
				t.Logf("testenv: rabbitmq: could not restore lease of %s: %v", l.name, err)
			}
		}
	}
	f, err := openLockFile(path)
	if err == nil {
		err = flockWait(f, lockExclusive, rabbitExclusiveWait)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		restore()
		if errors.Is(err, errLockTimeout) {
			t.Fatalf("testenv: rabbitmq restart: other tests kept using the node for %v: %v", rabbitExclusiveWait, err)
		} else {
			t.Logf("testenv: rabbitmq: restarting without fencing off other tests: %v", err)
		}
		return func() {}
	}
	return func() {
		f.Close()
		restore()
	}
}
