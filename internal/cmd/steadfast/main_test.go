package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

func runCmd(args ...string) (int, string, string) {
	var out, errs bytes.Buffer
	code := run(context.Background(), args, &out, &errs)
	return code, out.String(), errs.String()
}

// TestHelp: the tool and each subcommand print their help, and usage
// errors exit with 2.
func TestHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want []string
	}{
		{nil, exitUsage, []string{"usage: steadfast <command>", "outbox", "saga", "dlq", "projection"}},
		{[]string{"help"}, exitOK, []string{"outbox", "saga", "dlq", "STEADFAST_POSTGRES_URL"}},
		{[]string{"-h"}, exitOK, []string{"commands:"}},
		{[]string{"frobnicate"}, exitUsage, []string{`unknown command "frobnicate"`, "commands:"}},
		{[]string{"outbox", "-h"}, exitOK, []string{"redrive", "-db URL"}},
		{[]string{"help", "outbox"}, exitOK, []string{"redrive"}},
		{[]string{"outbox", "list", "-h"}, exitOK, []string{"-after", "-limit", "-json", "STEADFAST_POSTGRES_URL"}},
		{[]string{"outbox", "stats", "-db="}, exitUsage, []string{"no database: pass -db or set STEADFAST_POSTGRES_URL"}},
		{[]string{"saga", "-h"}, exitOK, []string{"retry", "flows"}},
		{[]string{"saga", "list", "-h"}, exitOK, []string{"-status", "-limit", "-json"}},
		{[]string{"saga", "list", "-db="}, exitUsage, []string{"no database"}},
	} {
		code, out, errs := runCmd(c.args...)
		if code != c.code {
			t.Errorf("%q: exit %d, want %d\n%s%s", c.args, code, c.code, out, errs)
		}
		for _, w := range c.want {
			if !strings.Contains(out+errs, w) {
				t.Errorf("%q: output lacks %q:\n%s%s", c.args, w, out, errs)
			}
		}
	}
}

// TestOutboxAndSagaReachTheDatabase: the subcommands take
// STEADFAST_POSTGRES_URL when -db is not given.
func TestOutboxAndSagaReachTheDatabase(t *testing.T) {
	url := testenv.PostgresURL(t)
	t.Setenv("STEADFAST_POSTGRES_URL", url)
	// A table nobody created: the database answered, the query failed.
	code, _, errs := runCmd("outbox", "stats", "-table", "no_such_outbox_table")
	if code != 1 || !strings.Contains(errs, "no_such_outbox_table") {
		t.Errorf("outbox stats on a missing table = %d %q", code, errs)
	}
	code, _, errs = runCmd("saga", "counts", "-table", "no_such_saga_table")
	if code != 1 || !strings.Contains(errs, "no_such_saga_table") {
		t.Errorf("saga counts on a missing table = %d %q", code, errs)
	}
}

// TestDLQ: the dlq subcommand's help, its usage errors with their exit
// status, and a listing on RabbitMQ reached through STEADFAST_RABBITMQ_URL.
func TestDLQ(t *testing.T) {
	t.Setenv("STEADFAST_KAFKA_BROKERS", "")
	code, _, errs := runCmd("dlq", "-h")
	if code != 0 || !strings.Contains(errs, "list") || !strings.Contains(errs, "replay") {
		t.Errorf("dlq -h = %d %q", code, errs)
	}
	code, _, errs = runCmd("dlq", "list", "-broker", "kafka", "-dlq", "x")
	if code != exitUsage || !strings.Contains(errs, "-brokers is required") {
		t.Errorf("dlq list without brokers = %d %q", code, errs)
	}

	url := testenv.RabbitMQURL(t)
	t.Setenv("STEADFAST_RABBITMQ_URL", url)
	queue := testenv.Name(t, "dlq")
	code, out, errs := runCmd("dlq", "list", "-broker", "rabbitmq", "-dlq", queue, "-timeout", "1m")
	// The queue does not exist: the tool reaches RabbitMQ through the
	// variable and reports the queue, not a missing -url.
	if strings.Contains(errs, "-url is required") || (code != 0 && !strings.Contains(errs, queue)) {
		t.Errorf("dlq list on RabbitMQ = %d %q %q", code, out, errs)
	}
}

// TestProjection: the projection subcommand's help, and its database from
// STEADFAST_POSTGRES_URL.
func TestProjection(t *testing.T) {
	code, out, errs := runCmd("projection", "-h")
	if code != 0 || !strings.Contains(out+errs, "activate") {
		t.Errorf("projection -h = %d %q %q", code, out, errs)
	}
	t.Setenv("STEADFAST_POSTGRES_URL", testenv.PostgresURL(t))
	// A table nobody created: the database answered, the query failed.
	code, _, errs = runCmd("projection", "status", "-table", "no_such_projection_table")
	if code != 1 || !strings.Contains(errs, "no_such_projection_table") {
		t.Errorf("projection status on a missing table = %d %q", code, errs)
	}
}
