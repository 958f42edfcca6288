package sagacli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/postgres"
	"github.com/steadfast-go/steadfast/saga/sagacli"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := sagacli.Run(context.Background(), args, &out, &errs)
	return code, out.String(), errs.String()
}

type order struct{ ID string }

// TestCommands drives the tool against instances an engine left in the
// database: a parked one, a running one, a completed one, and tracked
// flows.
func TestCommands(t *testing.T) {
	pool, url, _ := testenv.PostgresDB(t)
	ctx := context.Background()
	out, err := outboxpg.New(pool, outboxpg.Config{Channel: testenv.Name(t, "o")})
	if err != nil {
		t.Fatal(err)
	}
	store, err := postgres.New(pool, postgres.Config{Outbox: out, Channel: testenv.Name(t, "s")})
	if err != nil {
		t.Fatal(err)
	}
	flows, err := postgres.NewFlows(pool, postgres.FlowsConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []func(context.Context) error{out.Migrate, store.Migrate, flows.Migrate} {
		if err := m(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A saga whose second (local) step always fails after the pivot:
	// instances park there.
	def, err := saga.Define("order", 1,
		saga.Step[order]{Name: "reserve", Command: func(context.Context, *order) (broker.Message, error) {
			return broker.Message{Topic: "inventory"}, nil
		}},
		saga.Step[order]{Name: "ship", Kind: saga.Retriable, Retry: saga.Retry{MaxAttempts: 1},
			Action: func(_ context.Context, _ saga.Tx, o *order) error {
				if o.ID == "parked-1" {
					return saga.Refusef("carrier down")
				}
				return nil
			}})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := saga.NewEngine(store, saga.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.Register(def); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"parked-1", "running-1", "done-1"} {
		if _, err := saga.Start(ctx, eng, def, id, order{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	reply := func(id string) {
		in, err := store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		m := broker.NewMessage("saga.replies", nil)
		m.Headers = map[string]string{saga.HeaderSagaID: id, saga.HeaderStep: "reserve", saga.HeaderAction: "do",
			saga.HeaderCommand: in.Awaiting, saga.HeaderOutcome: "success"}
		if err := eng.HandleReply(ctx, broker.Delivery{Message: m}); err != nil {
			t.Fatal(err)
		}
	}
	reply("parked-1")
	reply("done-1")
	tracker, err := saga.NewTracker(flows, saga.TrackerConfig{Flows: []saga.FlowSpec{{Name: "checkout",
		Events: []string{"cart.checked-out"}, Terminal: []string{"order.placed"}, Deadline: time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	first := saga.Choreography{Service: "cart"}.Begin(ctx, "carts", "cart.checked-out", nil)
	if err := tracker.Record(ctx, first); err != nil {
		t.Fatal(err)
	}
	db := "-db=" + url

	code, stdout, stderr := run(t, "list", db, "-status", "parked")
	if code != 0 || !strings.Contains(stdout, "parked-1") || strings.Contains(stdout, "running-1") ||
		!strings.Contains(stdout, "parked (running)") || !strings.Contains(stdout, "carrier down") {
		t.Errorf("list parked: %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, _ = run(t, "list", db, "-json", "-limit", "2")
	if lines := strings.Split(strings.TrimSpace(stdout), "\n"); code != 0 || len(lines) != 2 {
		t.Errorf("list -json -limit 2: %d\n%s", code, stdout)
	} else {
		var in saga.Instance
		if err := json.Unmarshal([]byte(lines[0]), &in); err != nil || in.ID != "done-1" || string(in.Data) != `{"ID":"done-1"}` {
			t.Errorf("list -json: %v %+v", err, in)
		}
	}
	code, stdout, _ = run(t, "show", "parked-1", db)
	if code != 0 || !strings.Contains(stdout, "saga parked-1: order version 1, parked (from running)") || !strings.Contains(stdout, "step-failed") {
		t.Errorf("show: %d\n%s", code, stdout)
	}
	code, stdout, _ = run(t, "counts", db)
	if code != 0 || !strings.Contains(stdout, "order  parked   1") || !strings.Contains(stdout, "order  1        2") {
		t.Errorf("counts: %d\n%s", code, stdout)
	}
	code, stdout, _ = run(t, "retry", db, "parked-1", "-reason", "carrier back")
	if code != 0 || !strings.Contains(stdout, "retry requested on parked-1") {
		t.Errorf("retry: %d %s", code, stdout)
	}
	if in, _ := store.Get(ctx, "parked-1"); in.Request != saga.RequestRetry || in.RequestReason != "carrier back" {
		t.Errorf("retry not recorded: %+v", in)
	}
	// Requests that do not apply fail with the reason.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"cancel", "done-1"}, "already finished"},
		{[]string{"skip", "running-1"}, "not parked"},
		{[]string{"show", "nope"}, "not found"},
	} {
		code, _, stderr := run(t, append(c.args, db)...)
		if code != sagacli.ExitFail || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: %d %q; want exit 1 mentioning %q", c.args, code, stderr, c.want)
		}
	}
	code, stdout, _ = run(t, "cancel", "running-1", db)
	if code != 0 || !strings.Contains(stdout, "cancel requested on running-1") {
		t.Errorf("cancel: %d %s", code, stdout)
	}
	time.Sleep(5 * time.Millisecond)
	code, stdout, _ = run(t, "flows", db, "-stuck")
	if code != 0 || !strings.Contains(stdout, first.ID) || !strings.Contains(stdout, "cart.checked-out") {
		t.Errorf("flows -stuck: %d\n%s", code, stdout)
	}
	code, stdout, _ = run(t, "flow", first.ID, db, "-mermaid")
	if code != 0 || !strings.Contains(stdout, "sequenceDiagram") || !strings.Contains(stdout, "stopped after cart.checked-out") {
		t.Errorf("flow -mermaid: %d\n%s", code, stdout)
	}
	code, stdout, _ = run(t, "flow", first.ID, db)
	if code != 0 || !strings.Contains(stdout, "flow checkout "+first.ID+": 1 events, done false") {
		t.Errorf("flow: %d\n%s", code, stdout)
	}
}

func TestUsage(t *testing.T) {
	t.Setenv(sagacli.EnvDatabaseURL, "")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command"},
		{[]string{"explode"}, 2, "unknown command"},
		{[]string{"show"}, 2, "show needs an ID"},
		{[]string{"list", "x"}, 2, "list takes no ID"},
		{[]string{"list"}, 2, "no database"},
		{[]string{"list", "-db=postgres://x", "-status", "lost"}, 2, "unknown status"},
		{[]string{"list", "-db=postgres://x", "-limit", "-1"}, 2, "-limit"},
		{[]string{"list", "-db=postgres://x", "-bogus"}, 2, "flag provided but not defined"},
		{[]string{"retry", "a", "b", "-db=postgres://x"}, 2, "unexpected arguments"},
		{[]string{"list", "-db=postgres://x", "-table", "Bad;Name"}, 2, "invalid table name"},
		{[]string{"help"}, 0, "usage: steadfast-saga"},
		{[]string{"list", "-h"}, 0, "-status"},
	} {
		code, _, stderr := run(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: %d %q; want %d mentioning %q", c.args, code, stderr, c.code, c.want)
		}
	}
}
