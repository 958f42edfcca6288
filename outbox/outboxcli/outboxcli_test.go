package outboxcli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxcli"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := outboxcli.Run(context.Background(), args, &out, &errs)
	return code, out.String(), errs.String()
}

// park enqueues msgs and parks them as a relay would after its last
// attempt, returning their row IDs.
func park(t *testing.T, pool *pgxpool.Pool, s *postgres.Store, reason string, msgs ...broker.Message) []int64 {
	t.Helper()
	ctx := context.Background()
	before, err := s.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, pool, msgs...); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for {
		c, err := s.Claim(ctx, outbox.ClaimRequest{Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Records()) == 0 {
			_ = c.Release(ctx)
			break
		}
		var out outbox.Outcome
		for _, r := range c.Records() {
			out.Failed = append(out.Failed, outbox.Failure{ID: r.ID, Reason: reason, Park: true})
			ids = append(ids, r.ID)
		}
		if err := c.Complete(ctx, out); err != nil {
			t.Fatal(err)
		}
	}
	after, err := s.Stats(ctx)
	if err != nil || after.Dead != before.Dead+int64(len(msgs)) || len(ids) != len(msgs) {
		t.Fatalf("parked %d rows (%+v, %v), want %d", len(ids), after, err, len(msgs))
	}
	return ids
}

func newStore(t *testing.T) (*pgxpool.Pool, *postgres.Store, string) {
	t.Helper()
	pool, url, _ := testenv.PostgresDB(t)
	s, err := postgres.New(pool, postgres.Config{Table: "shop_outbox", Channel: testenv.Name(t, "o")})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return pool, s, url
}

// TestCommands lists, shows, redrives and deletes parked rows and counts
// the backlog, against a real outbox table.
func TestCommands(t *testing.T) {
	t.Parallel()
	pool, s, url := newStore(t)
	ctx := context.Background()
	db := "-db=" + url
	tbl := "-table=shop_outbox"

	m1 := broker.NewMessage("orders", []byte(`{"id":"order-1"}`))
	m1.Key = "order-1"
	m1.Headers = map[string]string{broker.HeaderType: "order.placed"}
	// Hostile text from the table must not reach the terminal raw.
	m2 := broker.NewMessage("orders", []byte("evil \x1b[2J payload"))
	m2.Key = "order-2\x1b]0;title\a"
	ids := park(t, pool, s, "broker refused: topic authorization failed", m1, m2)
	pending := broker.NewMessage("orders", []byte(`{"id":"order-3"}`))
	if err := s.Enqueue(ctx, pool, pending); err != nil {
		t.Fatal(err)
	}

	code, out, errs := run(t, "stats", db, tbl)
	if code != outboxcli.ExitOK || !strings.Contains(out, "pending  1\n") || !strings.Contains(out, "parked   2\n") {
		t.Fatalf("stats = %d\n%s%s", code, out, errs)
	}
	code, out, _ = run(t, "stats", db, tbl, "-json")
	var st struct {
		Pending, Parked int64
	}
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Pending != 1 || st.Parked != 2 {
		t.Fatalf("stats -json = %d %q: %+v, %v", code, out, st, err)
	}

	code, out, errs = run(t, "list", db, tbl)
	if code != 0 || strings.Count(out, "\n") != 3 || !strings.Contains(out, "topic authorization failed") {
		t.Fatalf("list = %d\n%s%s", code, out, errs)
	}
	if strings.ContainsAny(out, "\x1b\a") {
		t.Errorf("list printed control characters: %q", out)
	}
	code, out, _ = run(t, "list", db, tbl, "-json", "-limit=1")
	var r struct {
		ID        int64
		MessageID string `json:"message_id"`
		Topic     string
		LastError string `json:"last_error"`
	}
	if err := json.Unmarshal([]byte(out), &r); code != 0 || err != nil || r.ID != ids[0] || r.MessageID != m1.ID {
		t.Fatalf("list -json -limit=1 = %d %q: %+v, %v", code, out, r, err)
	}
	code, out, _ = run(t, "list", db, tbl, "-after", strconv.FormatInt(ids[0], 10))
	if code != 0 || strings.Count(out, "\n") != 2 || strings.Contains(out, "order-1") {
		t.Fatalf("list -after = %d\n%s", code, out)
	}

	code, out, errs = run(t, "show", strconv.FormatInt(ids[0], 10), db, tbl)
	for _, want := range []string{m1.ID, "order-1", "type: order.placed", `{"id":"order-1"}`, "dead after 1 attempts"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s%s", want, out, errs)
		}
	}
	code, out, _ = run(t, "show", strconv.FormatInt(ids[1], 10), db, tbl)
	if code != 0 || strings.ContainsAny(out, "\x1b\a") || !strings.Contains(out, `\x1b[2J`) {
		t.Errorf("show of hostile text = %d %q", code, out)
	}
	// The pending row is not a parked row.
	code, _, errs = run(t, "show", strconv.FormatInt(ids[1]+1, 10), db, tbl)
	if code != outboxcli.ExitFail || !strings.Contains(errs, "not a parked row") {
		t.Errorf("show of a pending row = %d %q", code, errs)
	}

	// Redrive one parked row and name the pending one too: the pending row
	// is left alone and reported.
	code, out, errs = run(t, "redrive", db, tbl, fmt.Sprintf("%d,%d", ids[0], ids[1]+1))
	if code != outboxcli.ExitFail || !strings.Contains(out, "1 of 2 rows redriven") || !strings.Contains(errs, "1 of the IDs named no parked row") {
		t.Fatalf("redrive = %d %q %q", code, out, errs)
	}
	if got, _ := s.Parked(ctx, outbox.ParkedQuery{}); len(got) != 1 || got[0].ID != ids[1] {
		t.Fatalf("after redrive, parked = %v", got)
	}
	if st, _ := s.Stats(ctx); st.Pending != 2 || st.Dead != 1 {
		t.Fatalf("after redrive, stats = %+v", st)
	}
	code, out, _ = run(t, "delete", db, tbl, "-all")
	if code != 0 || !strings.Contains(out, "1 of 1 rows deleted") {
		t.Fatalf("delete -all = %d %q", code, out)
	}
	if st, _ := s.Stats(ctx); st.Pending != 2 || st.Dead != 0 {
		t.Fatalf("after delete, stats = %+v; pending rows must survive delete -all", st)
	}
	code, out, _ = run(t, "redrive", db, tbl, "-all")
	if code != 0 || !strings.Contains(out, "no parked rows") {
		t.Fatalf("redrive -all with none = %d %q", code, out)
	}
}

// TestRedriveAllPages redrives more parked rows than one page holds.
func TestRedriveAllPages(t *testing.T) {
	t.Parallel()
	pool, s, url := newStore(t)
	msgs := make([]broker.Message, 1234)
	for i := range msgs {
		msgs[i] = broker.NewMessage("orders", []byte(strconv.Itoa(i)))
	}
	park(t, pool, s, "refused", msgs...)
	code, out, errs := run(t, "redrive", "-db", url, "-table", "shop_outbox", "-all")
	if code != 0 || !strings.Contains(out, "1234 of 1234 rows redriven") {
		t.Fatalf("redrive -all = %d %q %q", code, out, errs)
	}
	if st, _ := s.Stats(context.Background()); st.Pending != 1234 || st.Dead != 0 {
		t.Fatalf("stats = %+v", st)
	}
}

// TestUsage checks the usage errors (exit status 2) and help (0); none
// needs a database.
func TestUsage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{nil, outboxcli.ExitUsage, "no command"},
		{[]string{"help"}, outboxcli.ExitOK, "commands:"},
		{[]string{"frobnicate"}, outboxcli.ExitUsage, `unknown command "frobnicate"`},
		{[]string{"list", "-h"}, outboxcli.ExitOK, "-after"},
		{[]string{"redrive", "-db=postgres://x/"}, outboxcli.ExitUsage, "needs IDs, or -all"},
		{[]string{"delete", "-db=postgres://x/", "-all", "7"}, outboxcli.ExitUsage, "IDs or -all, not both"},
		{[]string{"redrive", "-db=postgres://x/", "seven"}, outboxcli.ExitUsage, `bad ID "seven"`},
		{[]string{"redrive", "-db=postgres://x/", "-3"}, outboxcli.ExitUsage, "flag provided but not defined"},
		{[]string{"show", "-db=postgres://x/"}, outboxcli.ExitUsage, "show needs one ID"},
		{[]string{"stats", "-db=postgres://x/", "4"}, outboxcli.ExitUsage, "stats takes no ID"},
		{[]string{"list", "-db=postgres://x/", "-limit=-1"}, outboxcli.ExitUsage, "must not be negative"},
		{[]string{"stats", "-db="}, outboxcli.ExitUsage, "no database: pass -db or set STEADFAST_POSTGRES_URL"},
		{[]string{"stats", "-db=postgres://x/", "-table=Bad;Name"}, outboxcli.ExitUsage, "invalid"},
	} {
		code, out, errs := run(t, c.args...)
		if code != c.code || !strings.Contains(out+errs, c.want) {
			t.Errorf("%q: exit %d, want %d; output lacks %q:\n%s%s", c.args, code, c.code, c.want, out, errs)
		}
	}
}

// TestDatabaseDown is a failure (exit 1) with the reason, not a hang.
func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	url := "postgres://nobody@" + testenv.ClosedAddr(t) + "/x?connect_timeout=5"
	code, _, errs := run(t, "stats", "-db", url)
	if code != outboxcli.ExitFail || !strings.HasPrefix(errs, "steadfast outbox: ") {
		t.Fatalf("stats on a closed port = %d %q", code, errs)
	}
}
