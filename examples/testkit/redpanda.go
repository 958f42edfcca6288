package testkit

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// redpandaImage is the Kafka-protocol broker started when Docker answers.
const redpandaImage = "docker.redpanda.com/redpandadata/redpanda:v24.2.7"

// redpanda is one Redpanda container per test process, left to
// testcontainers' reaper.
var redpanda = &redpandaService{}

type redpandaService struct {
	once  sync.Once
	seeds []string
	err   error
}

func (s *redpandaService) start() ([]string, error) {
	s.once.Do(func() { s.seeds, s.err = startRedpanda() })
	return s.seeds, s.err
}

// startRedpanda runs a one-node Redpanda in dev mode. Kafka clients connect
// to the address the broker advertises, so the container's Kafka port is
// bound to a host port chosen beforehand and advertised as such.
func startRedpanda() ([]string, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ctr, err := testcontainers.GenericContainer(ctx, testcontainers.GenericContainerRequest{
		ContainerRequest: testcontainers.ContainerRequest{
			Image:        redpandaImage,
			ExposedPorts: []string{fmt.Sprintf("%d:9092/tcp", port)},
			Cmd: []string{"redpanda", "start", "--mode", "dev-container", "--smp", "1",
				"--kafka-addr", "0.0.0.0:9092", "--advertise-kafka-addr", addr},
			WaitingFor: wait.ForLog("Successfully started Redpanda!").WithStartupTimeout(3 * time.Minute),
		},
		Started: true,
	})
	if err != nil {
		if ctr != nil {
			_ = ctr.Terminate(context.Background())
		}
		return nil, err
	}
	return []string{addr}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
