package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// check runs the quickstart and verifies what it prints.
func check(t *testing.T, backend string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"backend: " + backend,
		"published 5 events",
		"error, will be redelivered",
		"attempt 2 -> ok",
		"every group received all 5 events",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	// Each group saw every event exactly once, and alice's in order.
	for _, g := range []string{"billing", "shipping"} {
		var alice []string
		ok := 0
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(l, g) || !strings.HasSuffix(l, "-> ok") {
				continue
			}
			ok++
			if f := strings.Fields(l); f[1] == "alice" {
				alice = append(alice, f[2]+" "+f[3])
			}
		}
		if ok != 5 {
			t.Errorf("%s handled %d events successfully, want 5:\n%s", g, ok, s)
		}
		want := []string{"order-1 created", "order-1 paid", "order-1 shipped"}
		if strings.Join(alice, ",") != strings.Join(want, ",") {
			t.Errorf("%s saw alice's events as %v, want %v", g, alice, want)
		}
	}
}

func TestQuickstartMemory(t *testing.T) {
	t.Setenv("STEADFAST_KAFKA_BROKERS", "")
	t.Setenv("STEADFAST_RABBITMQ_URL", "")
	check(t, "memory")
}

func TestQuickstartRabbitMQ(t *testing.T) {
	t.Setenv("STEADFAST_KAFKA_BROKERS", "")
	t.Setenv("STEADFAST_RABBITMQ_URL", testenv.RabbitMQURL(t))
	check(t, "rabbitmq")
}

func TestQuickstartKafka(t *testing.T) {
	t.Setenv("STEADFAST_KAFKA_BROKERS", strings.Join(testenv.Kafka(t), ","))
	check(t, "kafka")
}
