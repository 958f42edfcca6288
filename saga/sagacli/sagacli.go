// Package sagacli is the operators' command line for sagas on PostgreSQL,
// as a package: Run takes the arguments and the output streams, so the
// steadfast-saga command (saga/cmd/steadfast-saga) and any larger tool can
// mount it as a subcommand.
//
//	steadfast-saga list   [-status parked,running] [-type T] [-after ID] [-limit N] [-json]
//	steadfast-saga show   ID [-json]
//	steadfast-saga retry  ID [-reason TEXT]
//	steadfast-saga skip   ID [-reason TEXT]
//	steadfast-saga cancel ID [-reason TEXT]
//	steadfast-saga counts [-json]
//	steadfast-saga flows  [-stuck] [-flow F] [-after ID] [-limit N] [-json]
//	steadfast-saga flow   CORRELATION-ID [-mermaid] [-json]
//
// Every subcommand takes -db URL (default: $STEADFAST_POSTGRES_URL), -table
// (the instances table, default "saga"), -flow-table (default "saga_flow")
// and -timeout (default 30s). Requests (retry, skip, cancel) are recorded
// on the instance and carried out by the next engine that picks it up, at
// once when one is running (they notify the engines). The tool needs no
// saga definitions: it reads and writes the tables only.
//
// Exit status: 0 on success, 1 when the operation failed (a request that
// does not apply, an instance that does not exist, a database error), 2 on
// a usage error.
package sagacli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	"github.com/steadfast-go/steadfast/saga"
	"github.com/steadfast-go/steadfast/saga/postgres"
)

// EnvDatabaseURL is the variable -db defaults to.
const EnvDatabaseURL = "STEADFAST_POSTGRES_URL"

// Exit statuses.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

const usage = `usage: steadfast-saga <command> [flags]

commands:
  list     list instances (-status, -type, -after, -limit)
  show     an instance and its history
  retry    resume a parked instance at the step it parked on
  skip     resume a parked instance past the step it parked on
  cancel   compensate a running instance (before its pivot), abort a parked one
  counts   unfinished instances by type, version and status
  flows    tracked choreographed flows (-stuck: past their deadline)
  flow     one flow's events (-mermaid: a sequence diagram)

Run "steadfast-saga <command> -h" for the flags.
`

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// options are the parsed flags.
type options struct {
	cmd, db, table, flowTable, typ, after, reason, flow string
	statuses                                            []saga.Status
	limit                                               int
	timeout                                             time.Duration
	json, stuck, mermaid                                bool
	id                                                  string
}

// Run runs one command: args are the arguments after the program name
// (the subcommand first). It writes results to stdout and errors to stderr
// and returns the exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-saga: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return ExitUsage
		}
		return ExitFail
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, o.db)
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-saga: database: %v\n", err)
		return ExitUsage
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Table: o.table, Outbox: noOutbox{}})
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-saga: %v\n", err)
		return ExitUsage
	}
	flows, err := postgres.NewFlows(pool, postgres.FlowsConfig{Table: o.flowTable})
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-saga: %v\n", err)
		return ExitUsage
	}
	if err := do(ctx, o, store, flows, stdout); err != nil {
		fmt.Fprintf(stderr, "steadfast-saga: %v\n", err)
		return ExitFail
	}
	return ExitOK
}

// noOutbox stands in for the outbox: the tool records requests and never
// runs a transition that sends messages.
type noOutbox struct{}

func (noOutbox) Enqueue(context.Context, outboxpg.DB, ...broker.Message) error {
	return errors.New("sagacli: the operators' tool sends no messages")
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return o, usagef("no command")
	}
	o.cmd = args[0]
	switch o.cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usage)
		return o, flag.ErrHelp
	case "list", "show", "retry", "skip", "cancel", "counts", "flows", "flow":
	default:
		fmt.Fprint(stderr, usage)
		return o, usagef("unknown command %q", o.cmd)
	}
	fs := flag.NewFlagSet("steadfast-saga "+o.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.db, "db", os.Getenv(EnvDatabaseURL), "PostgreSQL URL (default $"+EnvDatabaseURL+")")
	fs.StringVar(&o.table, "table", postgres.DefaultTable, "instances table (history: <table>_history)")
	fs.StringVar(&o.flowTable, "flow-table", postgres.DefaultFlowTable, "flow tracker table (events: <table>_event)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	status := ""
	switch o.cmd {
	case "list":
		fs.StringVar(&status, "status", "", "comma-separated statuses: running, compensating, parked, completed, compensated, aborted")
		fs.StringVar(&o.typ, "type", "", "saga type")
		fs.StringVar(&o.after, "after", "", "list IDs after this one (paging)")
		fs.IntVar(&o.limit, "limit", 100, "at most this many")
		fs.BoolVar(&o.json, "json", false, "one JSON object per line")
	case "show", "counts", "flow":
		fs.BoolVar(&o.json, "json", false, "JSON output")
		if o.cmd == "flow" {
			fs.BoolVar(&o.mermaid, "mermaid", false, "print a Mermaid sequence diagram")
		}
	case "retry", "skip", "cancel":
		fs.StringVar(&o.reason, "reason", "", "recorded in the history")
	case "flows":
		fs.BoolVar(&o.stuck, "stuck", false, "only unfinished flows past their deadline")
		fs.StringVar(&o.flow, "flow", "", "flow type")
		fs.StringVar(&o.after, "after", "", "list correlation IDs after this one (paging)")
		fs.IntVar(&o.limit, "limit", 100, "at most this many")
		fs.BoolVar(&o.json, "json", false, "one JSON object per line")
	}
	// The ID may come before, between or after the flags.
	var ids []string
	for rest := args[1:]; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return o, err
			}
			return o, usagef("%v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		ids = append(ids, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(ids) > 1 {
		return o, usagef("unexpected arguments %q", ids[1:])
	}
	if len(ids) == 1 {
		o.id = ids[0]
	}
	switch o.cmd {
	case "show", "retry", "skip", "cancel", "flow":
		if o.id == "" {
			return o, usagef("%s needs an ID", o.cmd)
		}
	default:
		if o.id != "" {
			return o, usagef("%s takes no ID", o.cmd)
		}
	}
	if o.db == "" {
		return o, usagef("no database: pass -db or set %s", EnvDatabaseURL)
	}
	if o.limit < 0 || o.timeout <= 0 {
		return o, usagef("-limit must not be negative and -timeout must be positive")
	}
	if status != "" {
		for _, s := range strings.Split(status, ",") {
			st := saga.Status(strings.TrimSpace(s))
			if !st.Valid() {
				return o, usagef("unknown status %q", s)
			}
			o.statuses = append(o.statuses, st)
		}
	}
	return o, nil
}

func do(ctx context.Context, o options, store *postgres.Store, flows *postgres.Flows, w io.Writer) error {
	enc := json.NewEncoder(w)
	switch o.cmd {
	case "list":
		list, err := store.List(ctx, saga.Query{Status: o.statuses, Type: o.typ, AfterID: o.after, Limit: o.limit})
		if err != nil {
			return err
		}
		if o.json {
			for _, in := range list {
				if err := enc.Encode(in); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTYPE\tVERSION\tSTATUS\tSTEP\tATTEMPT\tUPDATED\tFAILURE")
		for _, in := range list {
			st := string(in.Status)
			if in.Status == saga.StatusParked {
				st += " (" + string(in.ParkedFrom) + ")"
			}
			if in.Request != "" {
				st += ", " + string(in.Request) + " requested"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", in.ID, in.Type, in.Version, st, in.StepName, in.Attempt,
				in.UpdatedAt.UTC().Format(time.RFC3339), short(in.Failure, 80))
		}
		return tw.Flush()
	case "show":
		tl, err := saga.LoadTimeline(ctx, store, o.id)
		if err != nil {
			return err
		}
		if o.json {
			return enc.Encode(struct {
				Instance saga.Instance `json:"instance"`
				Events   []saga.Event  `json:"events"`
			}{tl.Instance, tl.Events})
		}
		_, err = io.WriteString(w, tl.String())
		return err
	case "retry", "skip", "cancel":
		kind := map[string]saga.RequestKind{"retry": saga.RequestRetry, "skip": saga.RequestSkip, "cancel": saga.RequestCancel}[o.cmd]
		in, err := store.Request(ctx, o.id, saga.Request{Kind: kind, Reason: o.reason})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%s requested on %s (%s, %s at step %q); an engine carries it out\n", kind, in.ID, in.Type, in.Status, in.StepName)
		return nil
	case "counts":
		counts, err := store.Counts(ctx)
		if err != nil {
			return err
		}
		versions, err := store.Unfinished(ctx)
		if err != nil {
			return err
		}
		if o.json {
			return enc.Encode(struct {
				Statuses []saga.StatusCount `json:"statuses"`
				Versions []saga.TypeVersion `json:"versions"`
			}{counts, versions})
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tSTATUS\tINSTANCES")
		for _, c := range counts {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", c.Type, c.Status, c.Count)
		}
		fmt.Fprintln(tw, "\nTYPE\tVERSION\tUNFINISHED\tEXAMPLE")
		for _, v := range versions {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", v.Type, v.Version, v.Instances, v.Example)
		}
		return tw.Flush()
	case "flows":
		var list []saga.FlowSummary
		var err error
		if o.stuck {
			list, err = flows.Stuck(ctx, time.Now(), o.limit)
		} else {
			list, err = flows.Flows(ctx, saga.FlowQuery{Flow: o.flow, AfterID: o.after, Limit: o.limit})
		}
		if err != nil {
			return err
		}
		if o.json {
			for _, f := range list {
				if err := enc.Encode(f); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "CORRELATION-ID\tFLOW\tEVENTS\tDONE\tLAST EVENT\tFROM\tSINCE\tDUE")
		for _, f := range list {
			due := ""
			if !f.DueAt.IsZero() {
				due = f.DueAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%v\t%s\t%s\t%s\t%s\n", f.CorrelationID, f.Flow, f.Events, f.Done, f.LastType,
				f.LastSource, f.LastAt.UTC().Format(time.RFC3339), due)
		}
		return tw.Flush()
	case "flow":
		ft, err := saga.LoadFlow(ctx, flows, o.id)
		if err != nil {
			return err
		}
		switch {
		case o.json:
			return enc.Encode(ft)
		case o.mermaid:
			_, err = io.WriteString(w, ft.Mermaid())
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "flow %s %s: %d events, done %v\n", ft.Flow.Flow, ft.Flow.CorrelationID, ft.Flow.Events, ft.Flow.Done)
		fmt.Fprintln(tw, "T+\tEVENT\tFROM\tTOPIC\tMESSAGE\tCAUSED BY")
		for _, ev := range ft.Events {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", ev.At.Sub(ft.Flow.StartedAt).Round(time.Millisecond), ev.Type, ev.Source,
				ev.Topic, ev.MessageID, ev.CausationID)
		}
		return tw.Flush()
	}
	return usagef("unknown command %q", o.cmd)
}

func short(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
