package dlq

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
)

// Envelope header names. A dead letter carries the envelope in these
// headers next to the original message's own headers; its payload is the
// original payload, unchanged. A message on a retry topic carries the same
// headers (with HeaderDue) as its retry state. Every name starts with
// HeaderPrefix, in the library's reserved namespace
// (broker.ReservedHeaderPrefix), so no application header is taken for
// one; the broker adapters carry them like any message header.
const (
	HeaderPrefix = broker.ReservedHeaderPrefix + "dlq-"
	// HeaderID is the original Message.ID (the dead letter keeps the same
	// ID, so deduplicating consumers recognise a replay).
	HeaderID = HeaderPrefix + "id"
	// HeaderTopic, HeaderKey and HeaderTime are the original topic, key
	// and creation time (RFC 3339 with nanoseconds).
	HeaderTopic = HeaderPrefix + "topic"
	HeaderKey   = HeaderPrefix + "key"
	HeaderTime  = HeaderPrefix + "time"
	// HeaderPartition and HeaderOffset locate the original Kafka record;
	// absent where the broker has none.
	HeaderPartition = HeaderPrefix + "partition"
	HeaderOffset    = HeaderPrefix + "offset"
	// HeaderQueue is the RabbitMQ queue the message was consumed from.
	HeaderQueue = HeaderPrefix + "queue"
	// HeaderGroup is the consumer group and HeaderHandler the handler name
	// (Config.Name) that failed.
	HeaderGroup   = HeaderPrefix + "group"
	HeaderHandler = HeaderPrefix + "handler"
	// HeaderError is the text of the last error, at most MaxErrorBytes.
	HeaderError = HeaderPrefix + "error"
	// HeaderErrorClass is the Class of the last error: "transient" or
	// "permanent".
	HeaderErrorClass = HeaderPrefix + "error-class"
	// HeaderAttempts is the number of failed attempts.
	HeaderAttempts = HeaderPrefix + "attempts"
	// HeaderFirstFailure and HeaderLastFailure are the times of the first
	// and last failed attempt (RFC 3339 with nanoseconds).
	HeaderFirstFailure = HeaderPrefix + "first-failure"
	HeaderLastFailure  = HeaderPrefix + "last-failure"
	// HeaderDue, on retry-topic messages only, is the earliest time of the
	// next attempt.
	HeaderDue = HeaderPrefix + "due"

	// HeaderOmitted, on a dead letter that would not have fitted the
	// publisher's size limit with its envelope, says what it lacks:
	// "payload", or "payload,headers" when the original headers were left
	// out too. HeaderOriginalSize is then the original message's
	// broker.Message.Size. Such a dead letter cannot be replayed
	// (ErrIncomplete); its envelope still says what failed, where and why.
	HeaderOmitted      = HeaderPrefix + "omitted"
	HeaderOriginalSize = HeaderPrefix + "original-size"

	// HeaderReplayedAt is set on a replayed message: when it was replayed.
	// HeaderReplays counts the replays of the message so far. They are not
	// part of the envelope: a replayed message starts with no failures.
	HeaderReplayedAt = HeaderPrefix + "replayed-at"
	HeaderReplays    = HeaderPrefix + "replays"
)

// MaxErrorBytes bounds the error text kept in HeaderError; longer texts are
// cut at a UTF-8 boundary and end with "...".
const MaxErrorBytes = 2048

// envelopeHeaders are the headers ParseEnvelope reads and Strip removes.
var envelopeHeaders = [...]string{
	HeaderID, HeaderTopic, HeaderKey, HeaderTime, HeaderPartition, HeaderOffset,
	HeaderQueue, HeaderGroup, HeaderHandler, HeaderError, HeaderErrorClass,
	HeaderAttempts, HeaderFirstFailure, HeaderLastFailure, HeaderDue,
	HeaderOmitted, HeaderOriginalSize,
}

// Envelope is the failure record a dead letter carries: where the message
// came from, who failed on it, how often, when and why.
type Envelope struct {
	// ID is the original Message.ID.
	ID string
	// Topic, Key and Time are the original message's.
	Topic string
	Key   string
	Time  time.Time
	// Partition and Offset locate the original Kafka record, or are -1.
	Partition int32
	Offset    int64
	// Queue is the RabbitMQ queue the message was consumed from, or "".
	Queue string
	// Group is the consumer group and Handler the handler name that failed.
	Group   string
	Handler string
	// Error is the text of the last error and Class its class.
	Error string
	Class Class
	// Attempts is the number of failed attempts.
	Attempts int
	// FirstFailure and LastFailure are the times of the first and the last
	// failed attempt.
	FirstFailure time.Time
	LastFailure  time.Time
	// Due is when a message waiting on a retry topic may be tried again;
	// zero on dead letters.
	Due time.Time
	// PayloadOmitted and HeadersOmitted report a dead letter without the
	// original payload (and headers), left out because the message with
	// its envelope would have exceeded the publisher's size limit;
	// OriginalSize is then the original message's broker.Message.Size.
	// Such a dead letter cannot be replayed (ErrIncomplete).
	PayloadOmitted bool
	HeadersOmitted bool
	OriginalSize   int
}

// newEnvelope starts the envelope of a delivery that has none.
func newEnvelope(d broker.Delivery, handler string) Envelope {
	return Envelope{
		ID: d.ID, Topic: d.Topic, Key: d.Key, Time: d.Time,
		Partition: d.Partition, Offset: d.Offset, Queue: d.Queue,
		Group: d.Group, Handler: handler,
	}
}

// The range of envelope times: a message's (broker.MinTime to
// broker.MaxTime), so every time read can be written back and published.
var minTime, maxTime = broker.MinTime, broker.MaxTime

func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// SetHeaders writes e into h (which must not be nil), replacing envelope
// headers already there. Zero times, a -1 partition or offset and empty
// queue and handler names are left out.
func (e Envelope) SetHeaders(h map[string]string) {
	for _, k := range envelopeHeaders {
		delete(h, k)
	}
	h[HeaderID] = e.ID
	h[HeaderTopic] = e.Topic
	h[HeaderKey] = e.Key
	h[HeaderGroup] = e.Group
	h[HeaderError] = e.Error
	h[HeaderErrorClass] = e.Class.String()
	h[HeaderAttempts] = strconv.Itoa(e.Attempts)
	opt := func(k, v string) {
		if v != "" {
			h[k] = v
		}
	}
	optTime := func(k string, t time.Time) {
		if !t.IsZero() {
			h[k] = formatTime(t)
		}
	}
	optTime(HeaderTime, e.Time)
	optTime(HeaderFirstFailure, e.FirstFailure)
	optTime(HeaderLastFailure, e.LastFailure)
	optTime(HeaderDue, e.Due)
	if e.Partition >= 0 {
		h[HeaderPartition] = strconv.FormatInt(int64(e.Partition), 10)
	}
	if e.Offset >= 0 {
		h[HeaderOffset] = strconv.FormatInt(e.Offset, 10)
	}
	opt(HeaderQueue, e.Queue)
	opt(HeaderHandler, e.Handler)
	switch {
	case e.HeadersOmitted:
		h[HeaderOmitted] = "payload,headers"
	case e.PayloadOmitted:
		h[HeaderOmitted] = "payload"
	}
	if e.PayloadOmitted || e.HeadersOmitted {
		h[HeaderOriginalSize] = strconv.Itoa(e.OriginalSize)
	}
}

// ParseEnvelope reads the envelope from message headers. It returns an
// error wrapping ErrNoEnvelope when h has no HeaderAttempts, and one
// wrapping ErrMalformedEnvelope when a header does not parse, a count is
// negative or a time is outside [broker.MinTime, broker.MaxTime].
func ParseEnvelope(h map[string]string) (Envelope, error) {
	e := Envelope{Partition: -1, Offset: -1}
	attempts, ok := h[HeaderAttempts]
	if !ok {
		return e, ErrNoEnvelope
	}
	var err error
	if e.Attempts, err = strconv.Atoi(attempts); err != nil || e.Attempts < 0 {
		return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, HeaderAttempts, attempts)
	}
	e.ID, e.Topic, e.Key = h[HeaderID], h[HeaderTopic], h[HeaderKey]
	e.Queue, e.Group, e.Handler, e.Error = h[HeaderQueue], h[HeaderGroup], h[HeaderHandler], h[HeaderError]
	if c, ok := h[HeaderErrorClass]; ok {
		if e.Class, err = ParseClass(c); err != nil {
			return e, err
		}
	}
	times := [...]struct {
		k string
		t *time.Time
	}{{HeaderTime, &e.Time}, {HeaderFirstFailure, &e.FirstFailure}, {HeaderLastFailure, &e.LastFailure}, {HeaderDue, &e.Due}}
	for _, x := range times {
		if v, ok := h[x.k]; ok {
			if *x.t, err = time.Parse(time.RFC3339Nano, v); err != nil || x.t.Before(minTime) || x.t.After(maxTime) {
				return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, x.k, v)
			}
		}
	}
	if v, ok := h[HeaderPartition]; ok {
		p, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, HeaderPartition, v)
		}
		e.Partition = int32(p)
	}
	if v, ok := h[HeaderOffset]; ok {
		if e.Offset, err = strconv.ParseInt(v, 10, 64); err != nil {
			return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, HeaderOffset, v)
		}
	}
	if v, ok := h[HeaderOmitted]; ok {
		switch v {
		case "payload":
			e.PayloadOmitted = true
		case "payload,headers":
			e.PayloadOmitted, e.HeadersOmitted = true, true
		default:
			return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, HeaderOmitted, v)
		}
		size := h[HeaderOriginalSize]
		if e.OriginalSize, err = strconv.Atoi(size); err != nil || e.OriginalSize < 0 {
			return e, fmt.Errorf("%w: %s %q", ErrMalformedEnvelope, HeaderOriginalSize, size)
		}
	}
	return e, nil
}

// Strip returns a copy of h without the envelope headers (and nil when
// nothing is left). Replay headers are kept.
func Strip(h map[string]string) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := maps.Clone(h)
	for _, k := range envelopeHeaders {
		delete(out, k)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// truncate cuts s to at most n bytes at a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n < 4 {
		return ""
	}
	cut := n - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "") + "..."
}
