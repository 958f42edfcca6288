package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

const want = `ada +30 -> leader ada (30)
bob +50 -> leader bob (50)
cy +10 -> leader bob (50)
ada +25 -> leader ada (55)
cy +60 -> leader cy (70)
refused: cqrs: validation failed: command "game.score": score: want a player and positive points
totals v1: ada 55, bob 50, cy 70
totals v2 (rebuilt, serving): ada 55, bob 50, cy 70
`

func check(t *testing.T, pg, rd string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, pg, rd); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	if !strings.HasSuffix(out.String(), want) {
		t.Fatalf("output:\n%s\nwant it to end with:\n%s", out.String(), want)
	}
}

// With no infrastructure: the in-process stores.
func TestInProcess(t *testing.T) { check(t, "", "") }

// On PostgreSQL and Redis.
func TestBackends(t *testing.T) {
	check(t, testenv.PostgresURL(t), testenv.RedisURL(t))
}
