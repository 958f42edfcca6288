package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// TestOutboxExample runs the example on PostgreSQL.
func TestOutboxExample(t *testing.T) {
	t.Parallel()
	check(t, testenv.PostgresURL(t), "PostgreSQL")
}

// TestOutboxExampleMemory runs it as `go run ./examples/outbox` does with
// no infrastructure.
func TestOutboxExampleMemory(t *testing.T) {
	t.Parallel()
	check(t, "", "memory")
}

func check(t *testing.T, url, where string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, url); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"orders and outbox in " + where,
		"order-1: created, paid, shipped",
		"order-3: created",
		"order-4: created",
		"order-5: cancelled",
		"parked: broker: message too large",
		"6 events, each once and in order per order; nothing from the rolled-back order",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "order-2:") {
		t.Errorf("the rolled-back order produced an event:\n%s", s)
	}
	// A second run on the same tables works too.
	out.Reset()
	if err := run(ctx, &out, url); err != nil {
		t.Fatalf("second run: %v\n%s", err, out.String())
	}
}
