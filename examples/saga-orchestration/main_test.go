package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

// want is the whole narrative after the first line, which names the store.
const want = `order-1: started (created true), started again (created false): one instance
order-1:   inventory: reserved 1 book
order-1:   payment: charged 40
order-1:   shipping: shipped book
order-1: completed, payment pay-order-1
order-2:   inventory: reserved 1 piano
order-2:   payment: refused 4800 (card declined)
order-2:   inventory: released 1 piano (compensation)
order-2: compensated: step "charge-payment" failed: refused: card declined for 4800
order-3:   inventory: reserved 1 lamp
order-3:   payment: charged 75
order-3:   shipping: shipped lamp
order-3: completed, payment pay-order-3
`

// check runs the example and compares what it prints.
func check(t *testing.T, postgresURL, store string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, postgresURL); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	first, rest, _ := strings.Cut(out.String(), "\n")
	if !strings.HasPrefix(first, "saga store: "+store) {
		t.Errorf("first line %q, want the %s store", first, store)
	}
	if rest != want {
		t.Errorf("output:\n%s\nwant:\n%s", rest, want)
	}
}

func TestSagaOrchestrationMemory(t *testing.T) {
	t.Parallel()
	check(t, "", "memory")
}

func TestSagaOrchestrationPostgres(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	check(t, url, "postgres")
	check(t, url, "postgres") // a rerun on the same tables
}
