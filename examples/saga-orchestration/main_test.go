package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// want is the narrative after the lines naming the broker and the store.
const want = `order-1: started (created true), started again (created false): one instance
order-1:   inventory: reserved 1 book
order-1:   payment: charged 40
order-1:   shipping: shipped book
order-1: completed, payment pay-order-1
order-2:   inventory: reserved 1 piano
order-2:   payment: refused 4800 (card declined)
order-2:   inventory: released 1 piano (compensation)
order-2: compensated: step "charge-payment" failed: refused: card declined for 4800
order-2:   history: reserve-inventory attempts 1, done true, failed false, compensated true
order-2:   history: charge-payment    attempts 1, done false, failed true, compensated false
order-3:   inventory: reserved 1 lamp
order-3:   payment: charged 75
order-3:   shipping: shipped lamp
order-3: completed, payment pay-order-3
`

// check runs the example and compares what it prints.
func check(t *testing.T, be backends, broker, store string) {
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
	if !strings.HasPrefix(lines[0], "broker: "+broker) || !strings.HasPrefix(lines[1], "saga store: "+store) {
		t.Errorf("backends %q %q, want broker %s and saga store %s", lines[0], lines[1], broker, store)
	}
	if lines[2] != want {
		t.Errorf("output:\n%s\nwant:\n%s", lines[2], want)
	}
}

func TestSagaOrchestrationMemory(t *testing.T) {
	t.Parallel()
	check(t, backends{}, "memory", "memory")
}

func TestSagaOrchestrationPostgres(t *testing.T) {
	t.Parallel()
	be := backends{postgresURL: testenv.PostgresURL(t)}
	check(t, be, "memory", "postgres")
	check(t, be, "memory", "postgres") // a rerun on the same tables
}

func TestSagaOrchestrationPostgresKafka(t *testing.T) {
	t.Parallel()
	check(t, backends{postgresURL: testenv.PostgresURL(t), kafkaBrokers: strings.Join(testenv.Kafka(t), ",")}, "kafka", "postgres")
}

func TestSagaOrchestrationPostgresRabbitMQ(t *testing.T) {
	t.Parallel()
	check(t, backends{postgresURL: testenv.PostgresURL(t), rabbitmqURL: testenv.RabbitMQURL(t)}, "rabbitmq", "postgres")
}
