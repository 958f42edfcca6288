package cqrscli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/cqrscli"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
	"github.com/steadfast-go/steadfast/eventsource"
	espg "github.com/steadfast-go/steadfast/eventsource/postgres"
	"github.com/steadfast-go/steadfast/internal/testenv"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cqrscli.Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestCLI(t *testing.T) {
	t.Parallel()
	pool, url, _ := testenv.PostgresDB(t)
	ctx := context.Background()
	events, err := espg.New(pool, espg.Config{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := postgres.New(pool, postgres.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := events.Append(ctx, eventsource.StreamAppend{StreamID: "s-1", Expected: eventsource.NoStream,
		Events: []eventsource.EventData{{Type: "x", SchemaVersion: 1, Data: []byte(`{}`)}, {Type: "x", SchemaVersion: 1, Data: []byte(`{}`)}}})
	if err != nil {
		t.Fatal(err)
	}
	id := cqrs.ID{Name: "orders", Version: 1}
	l, err := store.Acquire(ctx, id, "tester")
	if err != nil {
		t.Fatal(err)
	}
	first := res[0].Positions[0]
	if err := l.Apply(ctx, cqrs.Commit{To: first, Events: 1, Skipped: []cqrs.SkippedEvent{{Position: first, StreamID: "s-1", Version: 1,
		Type: "x", EventID: "e1", Error: "bad"}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := l.Fail(ctx, first, cqrs.StatusStopped, 1, "poison"); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	code, out, errs := run(t, "status", "-db", url)
	if code != cqrscli.ExitOK || !strings.Contains(out, "orders@v1") || !strings.Contains(out, "stopped") || !strings.Contains(out, "poison") {
		t.Fatalf("status: %d %q %q", code, out, errs)
	}
	code, out, _ = run(t, "status", "-db", url, "-json", "-sample", "10ms")
	var row cqrscli.Row
	if code != cqrscli.ExitOK || json.Unmarshal([]byte(out), &row) != nil || row.Projection != "orders@v1" || row.LagEvents != 1 ||
		row.Events != 1 || row.Skipped != 1 || row.Status != "stopped" {
		t.Fatalf("status -json: %d %q (%+v)", code, out, row)
	}
	code, out, _ = run(t, "skipped", "orders@v1", "-db", url)
	if code != cqrscli.ExitOK || !strings.Contains(out, "e1") || !strings.Contains(out, "bad") {
		t.Fatalf("skipped: %d %q", code, out)
	}
	if code, out, errs = run(t, "reset", "-db", url, "orders@v1"); code != cqrscli.ExitOK {
		t.Fatalf("reset: %d %q %q", code, out, errs)
	}
	if st, _ := store.State(ctx, id); st.Status != cqrs.StatusRunning {
		t.Fatalf("after reset: %+v", st)
	}
	if code, out, errs = run(t, "activate", "-db", url, "orders@v1"); code != cqrscli.ExitOK {
		t.Fatalf("activate: %d %q %q", code, out, errs)
	}
	if v, _ := store.ActiveVersion(ctx, "orders"); v != 1 {
		t.Fatalf("active version %d, want 1", v)
	}
	if code, _, errs = run(t, "reset", "-db", url, "nothing@v1"); code != cqrscli.ExitFail || !strings.Contains(errs, "not found") {
		t.Fatalf("reset of an unknown projection: %d %q", code, errs)
	}
	for _, args := range [][]string{{}, {"nope"}, {"reset", "-db", url}, {"reset", "-db", url, "Bad@v1"}, {"skipped", "-db", url, "x@vq"},
		{"status", "-db", url, "extra"}} {
		if code, _, _ := run(t, args...); code != cqrscli.ExitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, cqrscli.ExitUsage)
		}
	}
	if code, _, _ := run(t, "-h"); code != cqrscli.ExitOK {
		t.Errorf("-h: exit %d", code)
	}
}
