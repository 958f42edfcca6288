package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// want is the narrative after the lines naming the backends.
const want = `order-1:   orders:    placed -> order.placed
order-1:   inventory: reserved 1 book -> inventory.reserved
order-1:   payment:   charged 40 -> payment.charged
order-1:   shipping:  shipped book -> order.shipped
order-1: tracker: done after 4 events: order.placed (orders) -> inventory.reserved (inventory) -> payment.charged (payment) -> order.shipped (shipping)
order-2:   orders:    placed -> order.placed
order-2:   inventory: reserved 1 piano -> inventory.reserved
order-2:   payment:   refused 4800 (card declined) -> payment.refused
order-2:   inventory: released 1 piano (compensation) -> inventory.released
order-2:   orders:    cancelled -> order.cancelled
order-2: tracker: done after 5 events: order.placed (orders) -> inventory.reserved (inventory) -> payment.refused (payment) -> inventory.released (inventory) -> order.cancelled (orders)
-- the shipping service goes down
order-3: tracker: stuck past its 1s deadline after payment.charged from payment (3 events)
-- the shipping service is back
order-3:   orders:    placed -> order.placed
order-3:   inventory: reserved 1 lamp -> inventory.reserved
order-3:   payment:   charged 75 -> payment.charged
order-3:   shipping:  shipped lamp -> order.shipped
order-3: tracker: done after 4 events: order.placed (orders) -> inventory.reserved (inventory) -> payment.charged (payment) -> order.shipped (shipping)
stuck flows now: 0
`

// check runs the example and compares what it prints.
func check(t *testing.T, be backends, broker, flows string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, be); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	lines := strings.SplitAfterN(out.String(), "\n", 3)
	if len(lines) != 3 {
		t.Fatalf("output too short:\n%s", out.String())
	}
	if !strings.HasPrefix(lines[0], "broker: "+broker) || !strings.HasPrefix(lines[1], "flow store: "+flows) {
		t.Errorf("backends %q %q, want broker %s and flow store %s", lines[0], lines[1], broker, flows)
	}
	if lines[2] != want {
		t.Errorf("output:\n%s\nwant:\n%s", lines[2], want)
	}
}

func TestSagaChoreographyMemory(t *testing.T) {
	t.Parallel()
	check(t, backends{}, "memory", "memory")
}

func TestSagaChoreographyKafkaPostgres(t *testing.T) {
	t.Parallel()
	check(t, backends{kafkaBrokers: strings.Join(testenv.Kafka(t), ","), postgresURL: testenv.PostgresURL(t)}, "kafka", "postgres")
}

func TestSagaChoreographyRabbitMQ(t *testing.T) {
	t.Parallel()
	check(t, backends{rabbitmqURL: testenv.RabbitMQURL(t), postgresURL: testenv.PostgresURL(t)}, "rabbitmq", "postgres")
}
