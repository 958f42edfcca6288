// Package dlqcli is the operators' command line for dead letters, as a
// package: Run takes the arguments and the output streams, so the
// steadfast-dlq command (dlq/cmd/steadfast-dlq) and any larger tool can
// mount it as a subcommand. It lists, peeks at, replays and purges the dead
// letters of a Kafka topic or a RabbitMQ queue written by package dlq.
//
//	steadfast-dlq list   -broker kafka|rabbitmq [where] [selection] [-json]
//	steadfast-dlq peek   -broker kafka|rabbitmq [where] [selection] [-json]
//	steadfast-dlq replay -broker kafka|rabbitmq [where] [selection | -all] [-to-topic T]
//	steadfast-dlq purge  -broker kafka|rabbitmq [where] [selection | -all]
//
// Where: the dead-letter destination is -dlq NAME, or -topic T -group G
// for the default name "T.G.dlq". Kafka is reached with -brokers
// host:port,... (default $STEADFAST_KAFKA_BROKERS), RabbitMQ with -url
// amqp://user:pass@host:port/vhost (default $STEADFAST_RABBITMQ_URL).
// -timeout bounds the whole operation (default 2m).
//
// Selection: -id ID (repeatable, or comma separated), -from and -to (RFC
// 3339; last failure time, from inclusive, to exclusive), -limit N (oldest
// first). replay and purge act on every dead letter only with -all, so a
// missing selector never empties a destination by accident.
//
//	steadfast-dlq list   -broker kafka -brokers localhost:9092 -topic orders -group billing
//	steadfast-dlq peek   -broker rabbitmq -dlq orders.billing.dlq -id 0190...
//	steadfast-dlq replay -broker kafka -dlq orders.billing.dlq -from 2025-03-01T00:00:00Z
//	steadfast-dlq purge  -broker rabbitmq -url amqp://localhost/ -topic orders -group billing -all
//
// list prints a table (or JSON lines with -json); peek prints each dead
// letter with its envelope, headers and payload; replay republishes the
// selection to the original topics (or -to-topic) with the replay headers
// and removes it; purge deletes it. Times shown are the original message's
// (its creation time, from the envelope) and the failures'; the time the
// dead letter was written is shown apart. Every text that came from a
// message (IDs, keys, topics, errors, header names and values, payloads)
// has its control and other non-printable characters escaped (\x1b,
// \u202e) before it reaches the terminal; -json output escapes them too.
//
// Exit status: 0 on success; 1 when the operation failed (wholly or
// partly), or when peek, replay or purge was given IDs of which some (peek)
// or all (replay, purge) were not found; 2 on a usage error.
package dlqcli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/kafkadlq"
	"github.com/steadfast-go/steadfast/dlq/rabbitdlq"
)

// The variables -url and -brokers default to.
const (
	EnvRabbitMQURL  = "STEADFAST_RABBITMQ_URL"
	EnvKafkaBrokers = "STEADFAST_KAFKA_BROKERS"
)

// Exit statuses.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

const usage = `usage: steadfast-dlq <command> -broker kafka|rabbitmq [flags]

commands:
  list     list dead letters (a table, or JSON lines with -json)
  peek     show dead letters with their envelope, headers and payload
  replay   republish dead letters to their original topic, then remove them
  purge    delete dead letters

Run "steadfast-dlq <command> -h" for the flags.
`

// what each command does, for its -h.
var about = map[string]string{
	"list":   "List the dead letters of a destination, oldest failure first.",
	"peek":   "Show the selected dead letters with their envelope, headers and payload.",
	"replay": "Republish the selected dead letters to their original topic (or -to-topic), then remove them.",
	"purge":  "Delete the selected dead letters.",
}

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

// Run runs one command: args are the arguments after the program name
// (the subcommand first). It writes results to stdout and errors to stderr
// and returns the exit status.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %s\n", Escape(err.Error()))
		var ue *usageError
		if errors.As(err, &ue) {
			return ExitUsage
		}
		return ExitFail
	}
	ctx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	// Warnings (an unreachable broker, a dead letter left behind) go to the
	// command's stderr; the inspectors' per-operation lines are not for a
	// terminal.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	in, closeIn, err := inspector(opts, log)
	if err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %s\n", Escape(err.Error()))
		return ExitUsage
	}
	defer closeIn()
	if err := do(ctx, opts, in, stdout); err != nil {
		fmt.Fprintf(stderr, "steadfast-dlq: %s\n", Escape(err.Error()))
		return ExitFail
	}
	return ExitOK
}

func parse(args []string, stderr io.Writer) (options, error) {
	var o options
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return o, usagef("missing command")
	}
	o.cmd = args[0]
	switch o.cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stderr, usage)
		return o, flag.ErrHelp
	case "list", "peek", "replay", "purge":
	default:
		fmt.Fprint(stderr, usage)
		return o, usagef("unknown command %q", o.cmd)
	}
	fs := flag.NewFlagSet("steadfast-dlq "+o.cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: steadfast-dlq %s -broker kafka|rabbitmq [flags]\n\n%s\n\nflags:\n", o.cmd, about[o.cmd])
		fs.PrintDefaults()
	}
	// Where.
	fs.StringVar(&o.broker, "broker", "", "kafka or rabbitmq (required)")
	fs.StringVar(&o.brokers, "brokers", "", "Kafka seed brokers, host:port,... (default $"+EnvKafkaBrokers+")")
	fs.StringVar(&o.url, "url", "", "RabbitMQ URL, amqp://user:pass@host:port/vhost (default $"+EnvRabbitMQURL+")")
	fs.StringVar(&o.dest, "dlq", "", "dead-letter topic (Kafka) or queue (RabbitMQ)")
	fs.StringVar(&o.topic, "topic", "", "original topic, with -group: the dead-letter destination is <topic>.<group>.dlq")
	fs.StringVar(&o.group, "group", "", "consumer group, with -topic")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up after this long")
	// Selection.
	fs.Func("id", "select the dead letters with this message ID (repeatable, or comma separated)", func(s string) error {
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
	// The command's own.
	switch o.cmd {
	case "list", "peek":
		fs.BoolVar(&o.json, "json", false, "print one JSON object per dead letter")
	case "replay", "purge":
		fs.BoolVar(&o.all, "all", false, "act on every dead letter (required when no -id, -from, -to or -limit selects)")
		if o.cmd == "replay" {
			fs.StringVar(&o.toTopic, "to-topic", "", "publish to this topic instead of each dead letter's original topic")
		}
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, usagef("unexpected arguments %q", fs.Args())
	}
	// Connection defaults come from the environment, applied after parsing
	// so that -h never prints a URL (and its password).
	if o.brokers == "" {
		o.brokers = os.Getenv(EnvKafkaBrokers)
	}
	if o.url == "" {
		o.url = os.Getenv(EnvRabbitMQURL)
	}
	switch {
	case o.broker != "kafka" && o.broker != "rabbitmq":
		return o, usagef("-broker must be kafka or rabbitmq")
	case o.broker == "kafka" && o.brokers == "":
		return o, usagef("-brokers is required with -broker kafka (or set %s)", EnvKafkaBrokers)
	case o.broker == "rabbitmq" && o.url == "":
		return o, usagef("-url is required with -broker rabbitmq (or set %s)", EnvRabbitMQURL)
	case o.dest == "" && (o.topic == "" || o.group == ""):
		return o, usagef("name the dead-letter destination with -dlq, or with -topic and -group")
	case o.dest != "" && (o.topic != "" || o.group != ""):
		return o, usagef("give -dlq or -topic and -group, not both")
	case o.limit < 0 || o.timeout <= 0:
		return o, usagef("-limit must not be negative and -timeout must be positive")
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

// missingIDs returns the IDs of o.ids that no dead letter of dls has.
func missingIDs(o options, dls []dlq.DeadLetter) []string {
	var out []string
	for _, id := range o.ids {
		if !slices.ContainsFunc(dls, func(dl dlq.DeadLetter) bool { return dl.ID() == id }) {
			out = append(out, id)
		}
	}
	return out
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
			err = printJSON(stdout, dls, o.cmd == "peek")
		case o.cmd == "list":
			err = printTable(stdout, o.dest, dls)
		default:
			err = printPeek(stdout, dls)
		}
		if err != nil {
			return err
		}
		if missing := missingIDs(o, dls); o.cmd == "peek" && len(missing) > 0 && (o.limit == 0 || len(dls) < o.limit) {
			return fmt.Errorf("no dead letter with ID %s in %s", quoteList(missing), o.dest)
		}
		return nil
	case "replay":
		n, err := in.Replay(ctx, f, dlq.ReplayOptions{Topic: o.toTopic})
		to := "their original topics"
		if o.toTopic != "" {
			to = strconv.Quote(o.toTopic)
		}
		fmt.Fprintf(stdout, "replayed %d dead letters from %s to %s\n", n, Escape(o.dest), Escape(to))
		if err == nil && n == 0 && len(o.ids) > 0 {
			err = fmt.Errorf("no dead letter with ID %s in %s", quoteList(o.ids), o.dest)
		}
		return err
	default:
		n, err := in.Purge(ctx, f)
		fmt.Fprintf(stdout, "purged %d dead letters from %s\n", n, Escape(o.dest))
		if err == nil && n == 0 && len(o.ids) > 0 {
			err = fmt.Errorf("no dead letter with ID %s in %s", quoteList(o.ids), o.dest)
		}
		return err
	}
}

func quoteList(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = strconv.Quote(id)
	}
	return strings.Join(q, ", ")
}

// Escape returns s with every character a terminal could act on or hide
// escaped Go-style: control characters (\n, \x1b, \u009b), format and
// other non-printable characters (\u202e), and bytes that are not UTF-8
// (\xff). Printable text, spaces included, is left as it is.
func Escape(s string) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r) && r != utf8.RuneError:
			b.WriteString(s[i : i+size])
		default:
			q := strconv.QuoteRuneToASCII(r) // 'x', '\n', '\x1b', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

// origin says where a dead letter was consumed from.
func origin(e dlq.Envelope) string {
	switch {
	case e.Partition >= 0 && e.Offset >= 0:
		return fmt.Sprintf("%s[%d]@%d", Escape(e.Topic), e.Partition, e.Offset)
	case e.Queue != "":
		return Escape(e.Topic) + " (queue " + Escape(e.Queue) + ")"
	}
	return Escape(e.Topic)
}

// messageTime is the original message's time: its envelope's, or for a
// dead letter without one (a broker's own dead-lettering), the time it
// carries.
func messageTime(dl dlq.DeadLetter) time.Time {
	if dl.EnvelopeErr == nil && !dl.Envelope.Time.IsZero() {
		return dl.Envelope.Time
	}
	return dl.Message.Time
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// oneLine keeps the first line of s, at most n runes, escaped.
func oneLine(s string, n int) string {
	s, _, cut := strings.Cut(s, "\n")
	if utf8.RuneCountInString(s) > n {
		s, cut = string([]rune(s)[:n]), true
	}
	s = Escape(s)
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", Escape(dl.Position), Escape(dl.ID()), formatTime(dl.FailedAt()), e.Attempts,
			e.Class, origin(e), Escape(e.Key), oneLine(e.Error, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%d dead letters in %s\n", len(dls), Escape(dest))
	return err
}

// payloadText returns p as text when it is UTF-8 whose only
// non-printable characters are newlines and tabs.
func payloadText(p []byte) (string, bool) {
	if !utf8.Valid(p) {
		return "", false
	}
	s := string(p)
	for _, r := range s {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' {
			return "", false
		}
	}
	return s, true
}

func printPeek(w io.Writer, dls []dlq.DeadLetter) error {
	for _, dl := range dls {
		e := dl.Envelope
		fmt.Fprintf(w, "--- %s at %s\n", Escape(dl.ID()), Escape(dl.Position))
		if dl.EnvelopeErr != nil {
			fmt.Fprintf(w, "envelope:      %s\n", Escape(dl.EnvelopeErr.Error()))
		}
		fmt.Fprintf(w, "origin:        %s\nkey:           %s\ngroup:         %s\nhandler:       %s\n",
			origin(e), Escape(e.Key), Escape(e.Group), Escape(e.Handler))
		fmt.Fprintf(w, "attempts:      %d (%s)\nmessage time:  %s\nfirst failure: %s\nlast failure:  %s\ndead-lettered: %s\n",
			e.Attempts, e.Class, formatTime(messageTime(dl)), formatTime(e.FirstFailure), formatTime(e.LastFailure), formatTime(dl.Message.Time))
		fmt.Fprintf(w, "error:         %s\n", Escape(e.Error))
		if e.PayloadOmitted {
			what := "payload"
			if e.HeadersOmitted {
				what = "payload and headers"
			}
			fmt.Fprintf(w, "omitted:       %s (the message of %d bytes did not fit the size limit with its envelope; it cannot be replayed)\n", what, e.OriginalSize)
		}
		h := dlq.Strip(dl.Message.Headers)
		keys := make([]string, 0, len(h))
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintln(w, "headers:")
		for _, k := range keys {
			fmt.Fprintf(w, "  %s: %s\n", Escape(k), Escape(h[k]))
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

// jsonDeadLetter is the -json form of a dead letter. Time is the original
// message's time, DeadLetteredAt the time the dead letter was written.
type jsonDeadLetter struct {
	ID             string            `json:"id"`
	Position       string            `json:"position"`
	Topic          string            `json:"topic"`
	Key            string            `json:"key,omitempty"`
	Partition      *int32            `json:"partition,omitempty"`
	Offset         *int64            `json:"offset,omitempty"`
	Queue          string            `json:"queue,omitempty"`
	Group          string            `json:"group,omitempty"`
	Handler        string            `json:"handler,omitempty"`
	Error          string            `json:"error"`
	Class          string            `json:"class"`
	Attempts       int               `json:"attempts"`
	FirstFailure   *time.Time        `json:"first_failure,omitempty"`
	LastFailure    *time.Time        `json:"last_failure,omitempty"`
	Time           *time.Time        `json:"time,omitempty"`
	DeadLetteredAt *time.Time        `json:"dead_lettered_at,omitempty"`
	Omitted        string            `json:"omitted,omitempty"`
	OriginalSize   int               `json:"original_size,omitempty"`
	EnvelopeError  string            `json:"envelope_error,omitempty"`
	Headers        map[string]string `json:"headers,omitempty"`
	Payload        *string           `json:"payload,omitempty"`
	PayloadBase64  *string           `json:"payload_base64,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func printJSON(w io.Writer, dls []dlq.DeadLetter, payload bool) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, dl := range dls {
		e := dl.Envelope
		j := jsonDeadLetter{
			ID: dl.ID(), Position: dl.Position, Topic: e.Topic, Key: e.Key, Queue: e.Queue, Group: e.Group,
			Handler: e.Handler, Error: e.Error, Class: e.Class.String(), Attempts: e.Attempts,
			FirstFailure: timePtr(e.FirstFailure), LastFailure: timePtr(e.LastFailure),
			Time: timePtr(messageTime(dl)), DeadLetteredAt: timePtr(dl.Message.Time),
			Headers: dlq.Strip(dl.Message.Headers),
		}
		if e.Partition >= 0 {
			j.Partition = &e.Partition
		}
		if e.Offset >= 0 {
			j.Offset = &e.Offset
		}
		if e.PayloadOmitted {
			j.Omitted, j.OriginalSize = "payload", e.OriginalSize
			if e.HeadersOmitted {
				j.Omitted = "payload,headers"
			}
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
		buf.Reset()
		if err := enc.Encode(j); err != nil {
			return err
		}
		if _, err := w.Write(escapeJSON(buf.Bytes())); err != nil {
			return err
		}
	}
	return nil
}

// escapeJSON escapes, in encoded JSON, the non-printable characters the
// encoder leaves as they are (DEL, C1 controls such as U+009B, format
// characters such as U+202E) as \uXXXX: the same JSON value, safe on a
// terminal. They can only occur inside strings, where \u escapes are
// valid.
func escapeJSON(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r >= 0x7f && r != utf8.RuneError && !unicode.IsPrint(r) {
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			if r > 0xFFFF {
				r1, r2 := utf16Pair(r)
				out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
			} else {
				out = fmt.Appendf(out, `\u%04x`, r)
			}
		} else if out != nil {
			out = append(out, b[i:i+size]...)
		}
		i += size
	}
	if out == nil {
		return b
	}
	return out
}

// utf16Pair is the surrogate pair of a rune above U+FFFF.
func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xD800 + (r>>10)&0x3FF, 0xDC00 + r&0x3FF
}
