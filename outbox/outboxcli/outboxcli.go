// Package outboxcli is the operators' command line for the outbox on
// PostgreSQL (outbox/postgres), as a package: Run takes the arguments and the
// output streams, so the steadfast command (steadfast outbox ...) and any
// larger tool can mount it as a subcommand.
//
//	outbox stats   [-json]
//	outbox list    [-after ID] [-limit N] [-json]
//	outbox show    ID [-json]
//	outbox redrive ID... | -all
//	outbox delete  ID... | -all
//
// list and show read parked rows (status dead: the relay gave up on them,
// or could never publish them); stats counts pending and parked rows and
// gives the age of the oldest pending one. redrive puts parked rows back to
// pending with their attempts reset (the relay publishes them again, waking
// at once through LISTEN/NOTIFY); delete removes parked rows for good.
// redrive and delete act on every parked row only with -all, so a missing ID
// never empties the parking lot by accident, and they only ever touch
// parked rows: an ID that names a pending or published row is left alone
// and reported.
//
// Every subcommand takes -db URL (default: $STEADFAST_POSTGRES_URL), -table
// (the outbox table, default "outbox") and -timeout (default 30s).
//
// Exit status: 0 on success, 1 when the operation failed (a database error,
// an ID that is not a parked row), 2 on a usage error.
package outboxcli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// EnvDatabaseURL is the variable -db defaults to.
const EnvDatabaseURL = "STEADFAST_POSTGRES_URL"

// Exit statuses.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

// Name is the program name the messages start with. A tool that mounts Run
// under another name passes that name in its own messages; Run's own are
// prefixed with Name.
const Name = "steadfast outbox"

const usage = `usage: steadfast outbox <command> [flags]

commands:
  stats    pending and parked rows, age of the oldest pending row
  list     parked rows (-after, -limit)
  show     one row, headers and payload
  redrive  put parked rows back to pending (IDs, or -all)
  delete   delete parked rows for good (IDs, or -all)

Every command takes -db URL (default $STEADFAST_POSTGRES_URL), -table and -timeout.
Run "steadfast outbox <command> -h" for the flags.
`

// pageSize is how many parked rows one query reads when a command walks
// all of them.
const pageSize = 500

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// options are the parsed flags.
type options struct {
	cmd, db, table string
	after          int64
	limit          int
	timeout        time.Duration
	json, all      bool
	ids            []int64
}

// Run runs one command: args are the arguments after the program name (the
// command first). It writes results to stdout and errors to stderr and
// returns the exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Name, err)
		return ExitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, o.db)
	if err != nil {
		fmt.Fprintf(stderr, "%s: database: %v\n", Name, err)
		return ExitUsage
	}
	defer pool.Close()
	store, err := postgres.New(pool, postgres.Config{Table: o.table})
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Name, err)
		return ExitUsage
	}
	if err := do(ctx, o, store, stdout); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", Name, err)
		return ExitFail
	}
	return ExitOK
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
	case "stats", "list", "show", "redrive", "delete":
	default:
		fmt.Fprint(stderr, usage)
		return o, usagef("unknown command %q", o.cmd)
	}
	fs := flag.NewFlagSet(Name+" "+o.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.db, "db", os.Getenv(EnvDatabaseURL), "PostgreSQL URL (default $"+EnvDatabaseURL+")")
	fs.StringVar(&o.table, "table", postgres.DefaultTable, `outbox table, "name" or "schema.name"`)
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "give up after this long")
	switch o.cmd {
	case "stats", "show":
		fs.BoolVar(&o.json, "json", false, "JSON output")
	case "list":
		fs.Int64Var(&o.after, "after", 0, "list IDs after this one (paging)")
		fs.IntVar(&o.limit, "limit", 100, "at most this many")
		fs.BoolVar(&o.json, "json", false, "one JSON object per line")
	case "redrive", "delete":
		fs.BoolVar(&o.all, "all", false, "every parked row")
	}
	// IDs may come before, between or after the flags.
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
	for _, arg := range ids {
		for _, s := range strings.Split(arg, ",") {
			id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
			if err != nil || id <= 0 {
				return o, usagef("bad ID %q: IDs are positive integers", s)
			}
			o.ids = append(o.ids, id)
		}
	}
	slices.Sort(o.ids)
	o.ids = slices.Compact(o.ids)
	switch o.cmd {
	case "stats", "list":
		if len(o.ids) > 0 {
			return o, usagef("%s takes no ID", o.cmd)
		}
	case "show":
		if len(o.ids) != 1 {
			return o, usagef("show needs one ID")
		}
	case "redrive", "delete":
		if len(o.ids) == 0 && !o.all {
			return o, usagef("%s needs IDs, or -all for every parked row", o.cmd)
		}
		if len(o.ids) > 0 && o.all {
			return o, usagef("%s takes IDs or -all, not both", o.cmd)
		}
	}
	if o.db == "" {
		return o, usagef("no database: pass -db or set %s", EnvDatabaseURL)
	}
	if o.limit < 0 || o.timeout <= 0 || o.after < 0 {
		return o, usagef("-limit and -after must not be negative and -timeout must be positive")
	}
	return o, nil
}

// row is a parked row as -json prints it.
type row struct {
	ID         int64             `json:"id"`
	MessageID  string            `json:"message_id"`
	Topic      string            `json:"topic"`
	Key        string            `json:"key,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Payload    string            `json:"payload"`
	Status     outbox.Status     `json:"status"`
	Attempts   int               `json:"attempts"`
	LastError  string            `json:"last_error,omitempty"`
	Malformed  string            `json:"malformed,omitempty"`
	EnqueuedAt time.Time         `json:"enqueued_at"`
	ParkedAt   time.Time         `json:"parked_at,omitzero"`
}

func toRow(r outbox.Record) row {
	return row{
		ID: r.ID, MessageID: r.Message.ID, Topic: r.Message.Topic, Key: r.Message.Key,
		Headers: r.Message.Headers, Payload: string(r.Message.Payload), Status: r.Status,
		Attempts: r.Attempts, LastError: r.LastError, Malformed: r.Malformed,
		EnqueuedAt: r.EnqueuedAt, ParkedAt: r.ParkedAt,
	}
}

func do(ctx context.Context, o options, store *postgres.Store, w io.Writer) error {
	enc := json.NewEncoder(w)
	switch o.cmd {
	case "stats":
		st, err := store.Stats(ctx)
		if err != nil {
			return err
		}
		if o.json {
			return enc.Encode(struct {
				Pending       int64     `json:"pending"`
				OldestPending time.Time `json:"oldest_pending,omitzero"`
				Dead          int64     `json:"parked"`
			}{st.Pending, st.OldestPending, st.Dead})
		}
		fmt.Fprintf(w, "pending  %d\n", st.Pending)
		if !st.OldestPending.IsZero() {
			fmt.Fprintf(w, "oldest   %s (%s ago)\n", st.OldestPending.UTC().Format(time.RFC3339),
				time.Since(st.OldestPending).Round(time.Second))
		}
		fmt.Fprintf(w, "parked   %d\n", st.Dead)
		return nil
	case "list":
		list, err := store.Parked(ctx, outbox.ParkedQuery{AfterID: o.after, Limit: o.limit})
		if err != nil {
			return err
		}
		if o.limit == 0 {
			list = nil // -limit 0 lists nothing (Parked reads 0 as its default)
		}
		if o.json {
			for _, r := range list {
				if err := enc.Encode(toRow(r)); err != nil {
					return err
				}
			}
			return nil
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTOPIC\tKEY\tATTEMPTS\tPARKED\tREASON")
		for _, r := range list {
			reason := r.LastError
			if r.Malformed != "" {
				reason = "malformed: " + r.Malformed
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", r.ID, printable(r.Message.Topic, 40), printable(r.Message.Key, 40),
				r.Attempts, r.ParkedAt.UTC().Format(time.RFC3339), printable(reason, 80))
		}
		return tw.Flush()
	case "show":
		r, err := findParked(ctx, store, o.ids[0])
		if err != nil {
			return err
		}
		if o.json {
			return enc.Encode(toRow(r))
		}
		fmt.Fprintf(w, "id:          %d\n", r.ID)
		fmt.Fprintf(w, "message id:  %s\n", printable(r.Message.ID, 0))
		fmt.Fprintf(w, "topic:       %s\n", printable(r.Message.Topic, 0))
		fmt.Fprintf(w, "key:         %s\n", printable(r.Message.Key, 0))
		fmt.Fprintf(w, "status:      %s after %d attempts\n", r.Status, r.Attempts)
		fmt.Fprintf(w, "enqueued at: %s\n", r.EnqueuedAt.UTC().Format(time.RFC3339Nano))
		fmt.Fprintf(w, "parked at:   %s\n", r.ParkedAt.UTC().Format(time.RFC3339Nano))
		fmt.Fprintf(w, "reason:      %s\n", printable(r.LastError, 0))
		if r.Malformed != "" {
			fmt.Fprintf(w, "malformed:   %s\n", printable(r.Malformed, 0))
		}
		fmt.Fprintln(w, "headers:")
		for _, k := range sortedKeys(r.Message.Headers) {
			fmt.Fprintf(w, "  %s: %s\n", printable(k, 0), printable(r.Message.Headers[k], 0))
		}
		fmt.Fprintf(w, "payload (%d bytes):\n%s\n", len(r.Message.Payload), printable(string(r.Message.Payload), 0))
		return nil
	case "redrive", "delete":
		ids := o.ids
		if o.all {
			var err error
			if ids, err = allParked(ctx, store); err != nil {
				return err
			}
		}
		if len(ids) == 0 {
			fmt.Fprintln(w, "no parked rows")
			return nil
		}
		act, verb := store.Redrive, "redriven"
		if o.cmd == "delete" {
			act, verb = store.Delete, "deleted"
		}
		n, err := act(ctx, ids...)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d of %d rows %s\n", n, len(ids), verb)
		if n < len(ids) {
			return fmt.Errorf("%d of the IDs named no parked row (pending, published, or gone)", len(ids)-n)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", o.cmd)
}

// findParked returns the parked row id.
func findParked(ctx context.Context, store *postgres.Store, id int64) (outbox.Record, error) {
	list, err := store.Parked(ctx, outbox.ParkedQuery{AfterID: id - 1, Limit: 1})
	if err != nil {
		return outbox.Record{}, err
	}
	if len(list) == 0 || list[0].ID != id {
		return outbox.Record{}, fmt.Errorf("row %d is not a parked row (pending, published, or gone)", id)
	}
	return list[0], nil
}

// allParked returns the IDs of every parked row, in pages.
func allParked(ctx context.Context, store *postgres.Store) ([]int64, error) {
	var ids []int64
	var after int64
	for {
		list, err := store.Parked(ctx, outbox.ParkedQuery{AfterID: after, Limit: pageSize})
		if err != nil {
			return nil, err
		}
		for _, r := range list {
			ids = append(ids, r.ID)
			after = r.ID
		}
		if len(list) < pageSize {
			return ids, nil
		}
	}
}

// printable makes text from the database safe for a terminal: control
// characters and invalid UTF-8 are escaped, and text longer than max runes
// (when max > 0) is cut with an ellipsis.
func printable(s string, max int) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if max > 0 && n == max {
			b.WriteString("…")
			break
		}
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && max == 0:
			b.WriteRune(r)
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || unicode.Is(unicode.Bidi_Control, r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
		i += size
		n++
	}
	return b.String()
}

func sortedKeys(m map[string]string) []string { return slices.Sorted(maps.Keys(m)) }
