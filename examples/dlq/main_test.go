package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// check runs the example and verifies what it prints.
func check(t *testing.T, be backends, broker string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, be); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"broker: " + broker,
		"A-1: attempt 1: charged 10\n",
		"A-2: attempt 1: does not decode (permanent)\n",
		"A-3: attempt 1: payment provider unavailable; attempt 2: payment provider unavailable; attempt 3: payment provider unavailable\n",
		"A-4: attempt 1: timeout; attempt 2: charged 40\n",
		"  A-2: permanent after 1 attempt(s) by billing/billing.charge: decode order: unexpected end of JSON input\n",
		"  A-3: transient after 3 attempt(s) by billing/billing.charge: payment provider unavailable\n",
		"provider fixed; replayed 1 dead letter (A-3)",
		"A-3 after the replay: attempt 1: charged 30 (replays: 1)",
		"purged 1 dead letter (A-2); 0 left",
		"every order charged once except the undecodable A-2: true",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

func TestDLQMemory(t *testing.T) {
	t.Parallel()
	check(t, backends{}, "memory")
}

func TestDLQKafka(t *testing.T) {
	t.Parallel()
	check(t, backends{kafkaBrokers: strings.Join(testenv.Kafka(t), ",")}, "kafka")
}

func TestDLQRabbitMQ(t *testing.T) {
	t.Parallel()
	check(t, backends{rabbitmqURL: testenv.RabbitMQURL(t)}, "rabbitmq")
}
