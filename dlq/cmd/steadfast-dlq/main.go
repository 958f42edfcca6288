// Command steadfast-dlq lists, peeks at, replays and purges the dead
// letters of a Kafka topic or a RabbitMQ queue written by the dlq package.
//
// Usage:
//
//	steadfast-dlq <list|peek|replay|purge> -broker kafka|rabbitmq [flags]
//
// The dead-letter destination is -dlq NAME, or -topic T -group G for the
// default name "T.G.dlq". Kafka is reached with -brokers host:port,...,
// RabbitMQ with -url amqp://user:pass@host:port/vhost.
//
// Selection (all subcommands): -id ID (repeatable, or comma separated),
// -from and -to (RFC 3339; last failure time, from inclusive, to
// exclusive), -limit N (oldest first). replay and purge act on every dead
// letter only with -all, so a missing selector never empties a
// destination by accident.
//
//	steadfast-dlq list   -broker kafka -brokers localhost:9092 -topic orders -group billing
//	steadfast-dlq peek   -broker rabbitmq -url amqp://guest:guest@localhost:5672/ -dlq orders.billing.dlq -id 0190...
//	steadfast-dlq replay -broker kafka -brokers localhost:9092 -dlq orders.billing.dlq -from 2025-03-01T00:00:00Z
//	steadfast-dlq purge  -broker rabbitmq -url amqp://localhost/ -topic orders -group billing -all
//
// list prints a table (or JSON lines with -json); peek prints each dead
// letter with its envelope, headers and payload; replay republishes the
// selection to the original topics (or -to-topic) with the replay headers
// and removes it; purge deletes it. The exit status is 0 on success, 1
// when the operation failed (wholly or partly) and 2 on a usage error.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: steadfast-dlq <list|peek|replay|purge> -broker kafka|rabbitmq [flags]

Run "steadfast-dlq <command> -h" for the flags.
`

// Exit statuses.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// options are the parsed flags.
type options struct {
	cmd, broker, brokers, url, dest, topic, group, toTopic string
	ids                                                    []string
	from, to                                               time.Time
	limit                                                  int
	all, json                                              bool
	timeout                                                time.Duration
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// run is the command: args are the arguments after the program name.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %v\n", err)
		var ue *usageError
		if errors.As(err, &ue) {
			return exitUsage
		}
		return exitFail
	}
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	// Warnings (an unreachable broker, a dead letter left behind) go to the
	// command's stderr; the inspectors' per-operation lines are not for a
	// terminal.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	in, closeIn, err := inspector(opts, log)
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %v\n", err)
		return exitUsage
	}
	defer closeIn()
	if err := do(ctx, opts, in, stdout); err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %v\n", err)
		return exitFail
	}
	return exitOK
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fmt.Fprint(stderr, usage)
			return o, flag.ErrHelp
		}
		fmt.Fprint(stderr, usage)
		return o, usagef("missing command")
	}
	o.cmd = args[0]
	switch o.cmd {
	case "list", "peek", "replay", "purge":
	default:
		fmt.Fprint(stderr, usage)
		return o, usagef("unknown command %q", o.cmd)
	}
	fs := flag.NewFlagSet("steadfast-dlq "+o.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.broker, "broker", "", "kafka or rabbitmq (required)")
	fs.StringVar(&o.brokers, "brokers", "", "Kafka seed brokers, host:port,...")
	fs.StringVar(&o.url, "url", "", "RabbitMQ URL, amqp://user:pass@host:port/vhost")
	fs.StringVar(&o.dest, "dlq", "", "dead-letter topic (Kafka) or queue (RabbitMQ)")
	fs.StringVar(&o.topic, "topic", "", "original topic, with -group: the dead-letter destination is <topic>.<group>.dlq")
	fs.StringVar(&o.group, "group", "", "consumer group, with -topic")
	fs.Func("id", "select the dead letter with this message ID (repeatable, or comma separated)", func(s string) error {
		for id := range strings.SplitSeq(s, ",") {
			if id = strings.TrimSpace(id); id != "" {
				o.ids = append(o.ids, id)
			}
		}
		return nil
	})
	timeFlag := func(dst *time.Time) func(string) error {
		return func(s string) error {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return fmt.Errorf("want an RFC 3339 time such as 2025-03-01T12:00:00Z: %w", err)
			}
			*dst = t
			return nil
		}
	}
	fs.Func("from", "select dead letters whose last failure is at or after this RFC 3339 time", timeFlag(&o.from))
	fs.Func("to", "select dead letters whose last failure is before this RFC 3339 time", timeFlag(&o.to))
	fs.IntVar(&o.limit, "limit", 0, "select at most this many dead letters, oldest first (0: no limit)")
	fs.BoolVar(&o.all, "all", false, "replay or purge: act on every dead letter when no other selector is given")
	fs.StringVar(&o.toTopic, "to-topic", "", "replay: publish to this topic instead of each dead letter's original topic")
	fs.BoolVar(&o.json, "json", false, "list, peek: print one JSON object per dead letter")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up after this long")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, usagef("unexpected arguments %q", fs.Args())
	}
	switch {
	case o.broker != "kafka" && o.broker != "rabbitmq":
		return o, usagef("-broker must be kafka or rabbitmq")
	case o.broker == "kafka" && o.brokers == "":
		return o, usagef("-brokers is required with -broker kafka")
	case o.broker == "rabbitmq" && o.url == "":
		return o, usagef("-url is required with -broker rabbitmq")
	case o.dest == "" && (o.topic == "" || o.group == ""):
		return o, usagef("name the dead-letter destination with -dlq, or with -topic and -group")
	case o.dest != "" && (o.topic != "" || o.group != ""):
		return o, usagef("give -dlq or -topic and -group, not both")
	case o.limit < 0 || o.timeout <= 0:
		return o, usagef("-limit must not be negative and -timeout must be positive")
	case o.toTopic != "" && o.cmd != "replay":
		return o, usagef("-to-topic is a replay flag")
	case o.json && o.cmd != "list" && o.cmd != "peek":
		return o, usagef("-json is a list and peek flag")
	}
	if o.dest == "" {
		o.dest = dlq.DeadLetterTopic(dlq.Envelope{Topic: o.topic, Group: o.group})
	}
	f := o.filter()
	if err := f.Validate(); err != nil {
		return o, usagef("%v", err)
	}
	if o.cmd == "replay" || o.cmd == "purge" {
		if f.All() && !o.all {
			return o, usagef("%s of every dead letter needs -all (or select with -id, -from, -to, -limit)", o.cmd)
		}
		if !f.All() && o.all {
			return o, usagef("-all cannot be combined with -id, -from, -to or -limit")
		}
	}
	return o, nil
}

func (o options) filter() dlq.Filter {
	return dlq.Filter{IDs: o.ids, From: o.from, To: o.to, Limit: o.limit}
}

// inspector opens the inspector of the chosen broker.
func inspector(o options, log *slog.Logger) (dlq.Inspector, func(), error) {
	switch o.broker {
	case "kafka":
		in, err := kafkadlq.NewInspector(kafkadlq.InspectorConfig{
			Config: kafka.Config{Brokers: kafka.ParseBrokers(o.brokers), ClientID: "steadfast-dlq", Logger: log},
			Topic:  o.dest,
		})
		if err != nil {
			return nil, nil, err
		}
		return in, func() { _ = in.Close() }, nil
	default:
		in, err := rabbitdlq.NewInspector(rabbitdlq.InspectorConfig{URL: o.url, Queue: o.dest, Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return in, func() { _ = in.Close() }, nil
	}
}

func do(ctx context.Context, o options, in dlq.Inspector, stdout io.Writer) error {
	f := o.filter()
	switch o.cmd {
	case "list", "peek":
		dls, err := in.List(ctx, f)
		if err != nil {
			return err
		}
		switch {
		case o.json:
			return printJSON(stdout, dls, o.cmd == "peek")
		case o.cmd == "list":
			return printTable(stdout, o.dest, dls)
		default:
			return printPeek(stdout, dls)
		}
	case "replay":
		n, err := in.Replay(ctx, f, dlq.ReplayOptions{Topic: o.toTopic})
		to := "their original topics"
		if o.toTopic != "" {
			to = strconv.Quote(o.toTopic)
		}
		fmt.Fprintf(stdout, "replayed %d dead letters from %s to %s\n", n, o.dest, to)
		return err
	default:
		n, err := in.Purge(ctx, f)
		fmt.Fprintf(stdout, "purged %d dead letters from %s\n", n, o.dest)
		return err
	}
}

// origin says where a dead letter was consumed from.
func origin(e dlq.Envelope) string {
	switch {
	case e.Partition >= 0 && e.Offset >= 0:
		return fmt.Sprintf("%s[%d]@%d", e.Topic, e.Partition, e.Offset)
	case e.Queue != "":
		return e.Topic + " (queue " + e.Queue + ")"
	}
	return e.Topic
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// oneLine keeps the first line of s, at most n runes.
func oneLine(s string, n int) string {
	s, _, cut := strings.Cut(s, "\n")
	if utf8.RuneCountInString(s) > n {
		s, cut = string([]rune(s)[:n]), true
	}
	if cut {
		s += "..."
	}
	return s
}

func printTable(w io.Writer, dest string, dls []dlq.DeadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POSITION\tID\tLAST FAILURE\tATTEMPTS\tCLASS\tORIGIN\tKEY\tERROR")
	for _, dl := range dls {
		e := dl.Envelope
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", dl.Position, dl.ID(), formatTime(dl.FailedAt()), e.Attempts,
			e.Class, origin(e), e.Key, oneLine(e.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d dead letters in %s\n", len(dls), dest)
	return err
}

// payloadText returns p as text when it is printable UTF-8.
func payloadText(p []byte) (string, bool) {
	if !utf8.Valid(p) {
		return "", false
	}
	s := string(p)
	for _, r := range s {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return "", false
		}
	}
	return s, true
}

func printPeek(w io.Writer, dls []dlq.DeadLetter) error {
	for _, dl := range dls {
		e := dl.Envelope
		fmt.Fprintf(w, "--- %s at %s\n", dl.ID(), dl.Position)
		if dl.EnvelopeErr != nil {
			fmt.Fprintf(w, "envelope:      %v\n", dl.EnvelopeErr)
		}
		fmt.Fprintf(w, "origin:        %s\nkey:           %s\ngroup:         %s\nhandler:       %s\n", origin(e), e.Key, e.Group, e.Handler)
		fmt.Fprintf(w, "attempts:      %d (%s)\nfirst failure: %s\nlast failure:  %s\nmessage time:  %s\n",
			e.Attempts, e.Class, formatTime(e.FirstFailure), formatTime(e.LastFailure), formatTime(dl.Message.Time))
		fmt.Fprintf(w, "error:         %s\n", e.Error)
		h := dlq.Strip(dl.Message.Headers)
		keys := make([]string, 0, len(h))
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintln(w, "headers:")
		for _, k := range keys {
			fmt.Fprintf(w, "  %s: %s\n", k, h[k])
		}
		if s, ok := payloadText(dl.Message.Payload); ok {
			fmt.Fprintf(w, "payload (%d bytes):\n%s\n", len(dl.Message.Payload), s)
		} else {
			fmt.Fprintf(w, "payload (%d bytes, base64):\n%s\n", len(dl.Message.Payload), base64.StdEncoding.EncodeToString(dl.Message.Payload))
		}
	}
	_, err := fmt.Fprintf(w, "%d dead letters\n", len(dls))
	return err
}

// jsonDeadLetter is the -json form of a dead letter.
type jsonDeadLetter struct {
	ID            string            `json:"id"`
	Position      string            `json:"position"`
	Topic         string            `json:"topic"`
	Key           string            `json:"key,omitempty"`
	Partition     *int32            `json:"partition,omitempty"`
	Offset        *int64            `json:"offset,omitempty"`
	Queue         string            `json:"queue,omitempty"`
	Group         string            `json:"group,omitempty"`
	Handler       string            `json:"handler,omitempty"`
	Error         string            `json:"error"`
	Class         string            `json:"class"`
	Attempts      int               `json:"attempts"`
	FirstFailure  *time.Time        `json:"first_failure,omitempty"`
	LastFailure   *time.Time        `json:"last_failure,omitempty"`
	Time          *time.Time        `json:"time,omitempty"`
	EnvelopeError string            `json:"envelope_error,omitempty"`
	Headers       map[string]string `json:"headers,omitempty"`
	Payload       *string           `json:"payload,omitempty"`
	PayloadBase64 *string           `json:"payload_base64,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func printJSON(w io.Writer, dls []dlq.DeadLetter, payload bool) error {
	enc := json.NewEncoder(w)
	for _, dl := range dls {
		e := dl.Envelope
		j := jsonDeadLetter{
			ID: dl.ID(), Position: dl.Position, Topic: e.Topic, Key: e.Key, Queue: e.Queue, Group: e.Group,
			Handler: e.Handler, Error: e.Error, Class: e.Class.String(), Attempts: e.Attempts,
			FirstFailure: timePtr(e.FirstFailure), LastFailure: timePtr(e.LastFailure), Time: timePtr(dl.Message.Time),
			Headers: dlq.Strip(dl.Message.Headers),
		}
		if e.Partition >= 0 {
			j.Partition = &e.Partition
		}
		if e.Offset >= 0 {
			j.Offset = &e.Offset
		}
		if dl.EnvelopeErr != nil {
			j.EnvelopeError = dl.EnvelopeErr.Error()
		}
		if payload {
			if s, ok := payloadText(dl.Message.Payload); ok {
				j.Payload = &s
			} else {
				b := base64.StdEncoding.EncodeToString(dl.Message.Payload)
				j.PayloadBase64 = &b
			}
		}
		if err := enc.Encode(j); err != nil {
			return err
		}
	}
	return nil
}
