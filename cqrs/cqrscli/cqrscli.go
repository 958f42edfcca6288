// Package cqrscli is the operators' command line for projections on
// PostgreSQL, as a package: Run takes the arguments and the output streams,
// so a command (or a larger tool mounting it as a subcommand) wraps it.
//
//	steadfast projection status   [-sample 1s] [-json]     every projection version: serving, status, checkpoint, lag, rate, time left
//	steadfast projection skipped  NAME@vN [-limit N] [-json] events the version skipped
//	steadfast projection reset    NAME@vN                  clear a stopped or retrying status
//	steadfast projection activate NAME@vN [-views a,b]     make the version the serving one (blue/green swap)
//
// Every subcommand takes -db URL (default: $STEADFAST_POSTGRES_URL), -table
// (the checkpoints table, default "cqrs_checkpoints"), -events-table (the
// event store's table, for the lag; default "events") and -timeout
// (default 30s). status -sample D reads the states twice, D apart, to show
// events/s and the time left at that rate.
//
// Exit status: 0 on success, 1 when the operation failed (a projection that
// does not exist, a version not caught up, a database error), 2 on a usage
// error.
package cqrscli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/cqrs/postgres"
)

// EnvDatabaseURL is the variable -db defaults to.
const EnvDatabaseURL = "STEADFAST_POSTGRES_URL"

// Exit statuses.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

const usage = `usage: steadfast projection <command> [flags]

commands:
  status    every projection version: serving, status, checkpoint, lag, rate, time left
  skipped   events a projection version skipped
  reset     clear a stopped or retrying status (the event is applied again)
  activate  make a projection version the serving one (blue/green swap)

Run "steadfast projection <command> -h" for the flags.
`

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

type options struct {
	cmd, db, table, events, views string
	timeout, sample               time.Duration
	limit                         int
	json                          bool
	id                            cqrs.ID
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
		fmt.Fprintf(stderr, "steadfast projection: %v\n", err)
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
		fmt.Fprintf(stderr, "steadfast projection: database: %v\n", err)
		return ExitUsage
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Table: o.table})
	if err != nil {
		fmt.Fprintf(stderr, "steadfast projection: %v\n", err)
		return ExitUsage
	}
	head, err := postgres.NewHead(pool, o.events)
	if err != nil {
		fmt.Fprintf(stderr, "steadfast projection: %v\n", err)
		return ExitUsage
	}
	if err := do(ctx, o, store, head, stdout); err != nil {
		fmt.Fprintf(stderr, "steadfast projection: %v\n", err)
		return ExitFail
	}
	return ExitOK
}

func parseID(s string) (cqrs.ID, error) {
	name, v, ok := strings.Cut(s, "@v")
	n, err := strconv.Atoi(v)
	if !ok || err != nil {
		return cqrs.ID{}, usagef("projection %q: want NAME@vVERSION", s)
	}
	id := cqrs.ID{Name: name, Version: n}
	if err := id.Validate(); err != nil {
		return id, usagef("%v", err)
	}
	return id, nil
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
	case "status", "skipped", "reset", "activate":
	default:
		fmt.Fprint(stderr, usage)
		return o, usagef("unknown command %q", o.cmd)
	}
	fs := flag.NewFlagSet("steadfast projection "+o.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.db, "db", os.Getenv(EnvDatabaseURL), "PostgreSQL URL (default $"+EnvDatabaseURL+")")
	fs.StringVar(&o.table, "table", postgres.DefaultTable, "checkpoints table")
	fs.StringVar(&o.events, "events-table", "events", "the event store's table (for the lag)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	switch o.cmd {
	case "status":
		fs.DurationVar(&o.sample, "sample", 0, "read twice this far apart to show events/s and time left")
		fs.BoolVar(&o.json, "json", false, "one JSON object per line")
	case "skipped":
		fs.IntVar(&o.limit, "limit", 100, "at most this many")
		fs.BoolVar(&o.json, "json", false, "one JSON object per line")
	case "activate":
		fs.StringVar(&o.views, "views", "", "comma-separated views to point at the version's tables (<view>_v<N>)")
	}
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
	want := 1
	if o.cmd == "status" {
		want = 0
	}
	if len(ids) != want {
		return o, usagef("%s takes %d projection argument(s), got %q", o.cmd, want, ids)
	}
	if want == 1 {
		id, err := parseID(ids[0])
		if err != nil {
			return o, err
		}
		o.id = id
	}
	if o.db == "" {
		return o, usagef("no database: set -db or $%s", EnvDatabaseURL)
	}
	if o.timeout <= 0 || o.sample < 0 || o.limit < 0 {
		return o, usagef("-timeout must be positive, -sample and -limit not negative")
	}
	return o, nil
}

// Row is one projection version in the status output.
type Row struct {
	Projection string  `json:"projection"`
	Serving    bool    `json:"serving"`
	Status     string  `json:"status"`
	Checkpoint string  `json:"checkpoint"`
	Events     int64   `json:"events"`
	Skipped    int64   `json:"skipped"`
	LagEvents  int64   `json:"lag_events"`
	Rate       float64 `json:"events_per_second,omitempty"`
	TimeLeft   string  `json:"time_left,omitempty"`
	Owner      string  `json:"owner,omitempty"`
	Updated    string  `json:"updated"`
	Error      string  `json:"error,omitempty"`
	Attempts   int     `json:"attempts,omitempty"`
}

func do(ctx context.Context, o options, store *postgres.Store, head *postgres.Head, out io.Writer) error {
	switch o.cmd {
	case "reset":
		if err := store.Reset(ctx, o.id); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s reset: the next run applies the event after its checkpoint again\n", o.id)
		return nil
	case "activate":
		var views []string
		if o.views != "" {
			views = strings.Split(o.views, ",")
		}
		if err := store.Activate(ctx, o.id, views); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s is serving\n", o.id)
		return nil
	case "skipped":
		list, err := store.Skipped(ctx, o.id, o.limit)
		if err != nil {
			return err
		}
		if o.json {
			enc := json.NewEncoder(out)
			for _, k := range list {
				if err := enc.Encode(k); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POSITION\tSTREAM\tVERSION\tTYPE\tEVENT ID\tERROR")
		for _, k := range list {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", k.Position, k.StreamID, k.Version, k.Type, k.EventID, k.Error)
		}
		return tw.Flush()
	}
	states, err := store.States(ctx)
	if err != nil {
		return err
	}
	var before map[cqrs.ID]cqrs.State
	if o.sample > 0 {
		before = map[cqrs.ID]cqrs.State{}
		for _, st := range states {
			before[st.ID] = st
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.sample):
		}
		if states, err = store.States(ctx); err != nil {
			return err
		}
	}
	h, herr := head.Head(ctx)
	rows := make([]Row, len(states))
	for i, st := range states {
		r := Row{Projection: st.ID.String(), Serving: st.Active, Status: string(st.Status), Checkpoint: st.Checkpoint.String(),
			Events: st.Events, Skipped: st.Skipped, Owner: st.Owner, Updated: st.Updated.UTC().Format(time.RFC3339), Error: st.Error,
			Attempts: st.Attempts}
		if herr == nil {
			r.LagEvents = max(h-st.Checkpoint.Sequence, 0)
		}
		if b, ok := before[st.ID]; ok {
			r.Rate = float64(st.Events-b.Events) / o.sample.Seconds()
			if r.Rate > 0 {
				r.TimeLeft = (time.Duration(float64(r.LagEvents)/r.Rate) * time.Second).Round(time.Second).String()
			}
		}
		rows[i] = r
	}
	if o.json {
		enc := json.NewEncoder(out)
		for _, r := range rows {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROJECTION\tSERVING\tSTATUS\tCHECKPOINT\tEVENTS\tSKIPPED\tLAG\tEVENTS/S\tTIME LEFT\tOWNER\tERROR")
	for _, r := range rows {
		serving := ""
		if r.Serving {
			serving = "yes"
		}
		rate := ""
		if o.sample > 0 {
			rate = strconv.FormatFloat(r.Rate, 'f', 0, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", r.Projection, serving, r.Status, r.Checkpoint, r.Events, r.Skipped,
			r.LagEvents, rate, r.TimeLeft, r.Owner, r.Error)
	}
	return tw.Flush()
}
