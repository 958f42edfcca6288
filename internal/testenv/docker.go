package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
)

// dockerProbeTimeout caps how long the one Docker probe per process may take.
const dockerProbeTimeout = 5 * time.Second

// containerStartTimeout caps a container start, image pull included.
const containerStartTimeout = 5 * time.Minute

var docker struct {
	once sync.Once
	err  error
}

// dockerUnavailable reports why testcontainers cannot be used (nil when a
// Docker daemon answered). The probe runs once per process and takes at most
// dockerProbeTimeout; with no daemon testcontainers fails fast ("rootless
// Docker not found" or a connection error).
func dockerUnavailable() error {
	docker.once.Do(func() { docker.err = probeDocker() })
	return docker.err
}

func probeDocker() error {
	ctx, cancel := context.WithTimeout(context.Background(), dockerProbeTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("testcontainers panicked: %v", r)
			}
		}()
		p, err := testcontainers.NewDockerProvider(testcontainers.WithLogger(tclog.NewNoopLogger()))
		if err != nil {
			done <- err
			return
		}
		done <- p.Health(ctx) // Health closes the provider
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer from Docker within %v", dockerProbeTimeout)
	}
}

// containerService starts one container for a backend, once per process, and
// remembers the result (or the error) for every later test. The container is
// left to testcontainers' reaper (Ryuk), which removes it when the process
// exits.
type containerService struct {
	request func() testcontainers.ContainerRequest
	port    string // the container port clients use, e.g. "5432/tcp"
	url     func(hostport string) string

	once sync.Once
	ctr  testcontainers.Container
	addr string
	err  error
}

func (s *containerService) start() (testcontainers.Container, string, error) {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), containerStartTimeout)
		defer cancel()
		ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
			ContainerRequest: s.request(),
			Started:          true,
		})
		if err != nil {
			if ctr != nil {
				_ = ctr.Terminate(context.Background())
			}
			s.err = err
			return
		}
		host, err := ctr.Host(ctx)
		if err != nil {
			s.err = err
			return
		}
		port, err := ctr.MappedPort(ctx, s.port)
		if err != nil {
			s.err = err
			return
		}
		s.ctr = ctr
		s.addr = s.url(net.JoinHostPort(host, port.Port()))
	})
	return s.ctr, s.addr, s.err
}

// backendURL resolves a backend's address: the environment variable when set
// (no Docker probe at all), else a container when Docker answers, else it
// calls Unavailable. fromEnv tells which; ctr is the container, if one is
// used. With a *testing.T, Unavailable does not return.
func backendURL(t testing.TB, backend, envVar string, svc *containerService) (url string, fromEnv bool, ctr testcontainers.Container) {
	t.Helper()
	if v := strings.TrimSpace(os.Getenv(envVar)); v != "" {
		return v, true, nil
	}
	if err := dockerUnavailable(); err != nil {
		Unavailable(t, backend, fmt.Sprintf("%s is not set and Docker is not available for testcontainers (%v)", envVar, err))
		return "", false, nil
	}
	ctr, url, err := svc.start()
	if err != nil {
		Unavailable(t, backend, fmt.Sprintf("%s is not set and the testcontainers container did not start: %v", envVar, err))
		return "", false, nil
	}
	return url, false, ctr
}

// dialCheck reports whether a TCP connection to hostport can be opened.
func dialCheck(hostport string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", hostport, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// DockerUnavailable reports why testcontainers cannot be used, or nil when
// a Docker daemon answered. The probe runs once per process (at most 5s).
func DockerUnavailable() error { return dockerUnavailable() }
