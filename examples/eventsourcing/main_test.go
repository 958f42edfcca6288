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
func check(t *testing.T, postgresURL, store string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, postgresURL); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"event store: " + store,
		"loaded account-1: ada has 100 EUR at version 2 (the v1 deposit upcast to v2)",
		"Deposit{Amount:50}     -> version 3, balance 150",
		"Withdraw{Amount:500}   refused: withdraw 500 from 120: insufficient funds",
		"Deposit{Amount:5}      -> version 7, balance 85",
		"loaded account-1 at version 7 from the snapshot at version 6, folding 1 event(s) after it: balance 85",
		"replayed from the first event: 7 events, balance 85, same state: true",
		`  account-1 v2 account.deposited (stored as schema 1): {"Amount":100,"Currency":"EUR"}`,
		`  account-1 v7 account.deposited (stored as schema 2): {"Amount":5,"Currency":"EUR"}`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if n := strings.Count(s, "  account-1 v"); n != 7 {
		t.Errorf("the stream shows %d events, want 7:\n%s", n, s)
	}
}

func TestEventSourcingMemory(t *testing.T) {
	t.Parallel()
	check(t, "", "memory")
}

func TestEventSourcingPostgres(t *testing.T) {
	t.Parallel()
	url := testenv.PostgresURL(t)
	check(t, url, "postgres")
	check(t, url, "postgres") // a rerun on the same tables
}
