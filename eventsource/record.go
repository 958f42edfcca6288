package eventsource

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
)

// Limits on what an event store accepts. Longer values are refused with
// ErrInvalidStreamID or ErrInvalidEvent rather than stored.
const (
	// MaxStreamIDBytes bounds a stream ID.
	MaxStreamIDBytes = 512
	// MaxTypeBytes bounds an event type name.
	MaxTypeBytes = 255
	// MaxEventIDBytes bounds an event ID.
	MaxEventIDBytes = 255
)

// Metadata is an event's metadata: string keys and values, stored beside
// the payload and carried as message headers when the event is published.
// The well-known keys are the broker header names (broker.HeaderCorrelationID,
// broker.HeaderCausationID, broker.HeaderTraceparent,
// broker.HeaderTracestate), so metadata and headers map one to one. Keys
// starting with broker.ReservedHeaderPrefix are the library's.
type Metadata map[string]string

// CorrelationID returns the correlation-id entry.
func (m Metadata) CorrelationID() string { return m[broker.HeaderCorrelationID] }

// CausationID returns the causation-id entry.
func (m Metadata) CausationID() string { return m[broker.HeaderCausationID] }

// EventData is an encoded event ready to append. A Registry's Encode makes
// one from a Go value; stores take it as it is.
type EventData struct {
	// ID identifies the event for good: a store keeps one event per ID, and
	// an append whose events are already stored (a retry after a lost
	// answer) returns the stored positions instead of storing them twice.
	// Empty means a new UUIDv7, drawn by the store.
	ID string
	// Type is the event's registered type name.
	Type string
	// SchemaVersion is the version of Type's schema the Data is encoded
	// in, at least 1.
	SchemaVersion int
	// Data is the encoded payload (JSON by default). It may be empty.
	Data []byte
	// Metadata travels with the event. It may be nil.
	Metadata Metadata
	// Time is when the event happened. Zero means the store's clock at the
	// append. Temporal reads (ReadOptions.AsOf) compare it.
	Time time.Time
}

// Record is an event as a store returns it.
type Record struct {
	EventData
	// StreamID is the stream the event belongs to.
	StreamID string
	// Version is the event's number within its stream: 1 for the first
	// event, then consecutive.
	Version int64
	// Position is the event's place in the global log.
	Position Position
	// Shredded reports that the event's payload was encrypted with its
	// stream's key and the key was deleted (crypto-shredding): Data is nil
	// and cannot be recovered. Type, metadata and positions remain.
	Shredded bool
}

// ExpectedVersion is what an append expects of its stream: one of
// AnyVersion, NoStream, StreamExists, or an exact version (the version of
// the stream's last event, ExpectedVersion(n) for n >= 1). When the stream
// does not match, the append stores nothing and returns an error matching
// ErrConcurrency.
type ExpectedVersion int64

const (
	// AnyVersion appends whatever the stream's state; it never conflicts
	// (except with a deleted or archived stream).
	AnyVersion ExpectedVersion = -1
	// StreamExists appends only to a stream that has events.
	StreamExists ExpectedVersion = -2
	// NoStream appends only if the stream has no events yet; it is the
	// exact version 0.
	NoStream ExpectedVersion = 0
)

// String returns "any", "exists", "no stream" or the version number.
func (e ExpectedVersion) String() string {
	switch {
	case e == AnyVersion:
		return "any"
	case e == StreamExists:
		return "exists"
	case e == NoStream:
		return "no stream"
	case e > 0:
		return strconv.FormatInt(int64(e), 10)
	}
	return fmt.Sprintf("ExpectedVersion(%d)", int64(e))
}

// valid reports whether e is one of the defined values.
func (e ExpectedVersion) valid() bool { return e >= StreamExists }

// Matches reports whether a stream whose last version is version (0: no
// events) satisfies e.
func (e ExpectedVersion) Matches(version int64) bool {
	switch e {
	case AnyVersion:
		return true
	case StreamExists:
		return version > 0
	}
	return int64(e) == version
}

// StreamAppend is the part of an append that goes to one stream.
type StreamAppend struct {
	StreamID string
	Expected ExpectedVersion
	Events   []EventData
}

// AppendResult is what an append stored in one stream.
type AppendResult struct {
	StreamID string
	// Version is the stream's version after the append: the version of its
	// last event.
	Version int64
	// Positions are the global positions of the appended events, in order.
	Positions []Position
	// Duplicate reports that every event was already stored by an earlier
	// append of the same events (a retry whose first attempt committed):
	// nothing was written, and Version and Positions are the stored ones.
	Duplicate bool
}

// Position returns the position of the last appended event: a reader (a
// projection) whose checkpoint is at or after it has handled every event of
// the append. It is the zero Position for an empty result.
func (r AppendResult) Position() Position {
	if len(r.Positions) == 0 {
		return Position{}
	}
	return r.Positions[len(r.Positions)-1]
}

// LastPosition returns the greatest Position of results: the point a reader
// must pass to have seen every event of an append.
func LastPosition(results []AppendResult) Position {
	var p Position
	for _, r := range results {
		if q := r.Position(); p.Before(q) {
			p = q
		}
	}
	return p
}

// ReadOptions select the events of a stream read.
type ReadOptions struct {
	// From is the first version to return (forward) or the last one
	// (Backward). Zero means the stream's first (or last) event.
	From int64
	// Backward reads from the end of the stream towards its start.
	Backward bool
	// Limit caps the number of events; zero means no limit.
	Limit int
	// AsOfVersion reads the stream as it was at that version: events after
	// it are left out. Zero means no bound.
	AsOfVersion int64
	// AsOfTime reads the stream as it was at that time: the events up to
	// the last one whose Time is at or before it. Zero means no bound.
	AsOfTime time.Time
	// Minimal reads only what folding the stream into a state needs:
	// Version, ID, Type, SchemaVersion, Data and Shredded; Metadata, Time
	// and Position are left zero. Repository loads set it.
	Minimal bool
}

// Filter selects events of the global log. The zero Filter selects all.
type Filter struct {
	// StreamPrefixes keeps events whose stream ID starts with one of them.
	// A category ("order" for streams "order-1", "order-2") is the prefix
	// "order-"; see Category.
	StreamPrefixes []string
	// Types keeps events of these stored type names.
	Types []string
}

// Category returns the stream prefix of a category: "order" gives
// "order-", which matches stream IDs such as "order-17". It is the
// convention CategoryOf reads back.
func Category(name string) string { return name + "-" }

// CategoryOf returns the category of a stream ID: the part before its first
// '-', or the whole ID when it has none.
func CategoryOf(streamID string) string {
	if i := strings.IndexByte(streamID, '-'); i >= 0 {
		return streamID[:i]
	}
	return streamID
}

// IsZero reports whether f selects every event.
func (f Filter) IsZero() bool { return len(f.StreamPrefixes) == 0 && len(f.Types) == 0 }

// Match reports whether r passes f.
func (f Filter) Match(r *Record) bool {
	if len(f.StreamPrefixes) > 0 {
		ok := false
		for _, p := range f.StreamPrefixes {
			if strings.HasPrefix(r.StreamID, p) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(f.Types) > 0 {
		for _, t := range f.Types {
			if r.Type == t {
				return true
			}
		}
		return false
	}
	return true
}

// LogQuery is one read of the global log.
type LogQuery struct {
	// After is the checkpoint: events after it are returned.
	After Position
	// Limit caps the number of records. Zero means DefaultLogLimit.
	Limit int
	// Filter selects records; the checkpoint still moves past records it
	// leaves out.
	Filter Filter
}

// DefaultLogLimit is the page size of a LogQuery with no Limit.
const DefaultLogLimit = 500

// Page is the result of a read of the global log.
type Page struct {
	// Records are the events after the query's checkpoint, in log order.
	Records []Record
	// Next is the checkpoint to read after next: the last record's
	// position when the page is full, else the fence ({Fence, 0}, meaning
	// every event below it was read) when that is further. It never moves
	// backwards from the query's checkpoint.
	Next Position
	// Fence is the oldest transaction that was still open when the page was
	// read (PostgreSQL: the xmin of the read's snapshot; with no open
	// transaction, the next transaction ID). Only events of transactions
	// before it are returned: those can no longer change.
	Fence uint64
	// HeldBack reports that committed events exist at or past Fence: an
	// open transaction (the one numbered Fence) holds the reader back. It is
	// normal for a moment while appends run; a fence that stays put is a
	// stall (see StallInspector).
	HeldBack bool
}

// Snapshot is a stored state of a stream at a version.
type Snapshot struct {
	StreamID string
	// Version is the stream version the state includes.
	Version int64
	// EventID is the ID of the event at Version. Loads use the snapshot
	// only if the stream's event at Version has this ID, so a snapshot that
	// outlived its events (written in a transaction that rolled back) is
	// ignored, never misread.
	EventID string
	// SchemaVersion is the version of the state's encoding.
	SchemaVersion int
	// Data is the encoded state.
	Data []byte
	// Time is when the snapshot was taken.
	Time time.Time
}

// Blocker describes the open transaction that holds readers of the global
// log back.
type Blocker struct {
	// Transaction is the blocking transaction's number (the fence).
	Transaction uint64
	// PID is the backend process ID of the PostgreSQL session running it
	// (pg_stat_activity.pid), 0 when unknown or not PostgreSQL.
	PID int
	// Started is when the transaction started, zero when unknown.
	Started time.Time
	// State, Application and Query describe the session as
	// pg_stat_activity does (state, application_name, the start of query),
	// when visible to the reader's role.
	State, Application, Query string
	// Prepared is the GID of a prepared (two-phase) transaction, which has
	// no session; empty otherwise.
	Prepared string
}

// String describes the blocker for a log line.
func (b Blocker) String() string {
	var s strings.Builder
	fmt.Fprintf(&s, "transaction %d", b.Transaction)
	if b.PID != 0 {
		fmt.Fprintf(&s, " (pid %d", b.PID)
		if b.State != "" {
			fmt.Fprintf(&s, ", %s", b.State)
		}
		if b.Application != "" {
			fmt.Fprintf(&s, ", application %q", b.Application)
		}
		s.WriteString(")")
	}
	if b.Prepared != "" {
		fmt.Fprintf(&s, " (prepared transaction %q)", b.Prepared)
	}
	return s.String()
}

// ValidateStreamID reports why id cannot name a stream: empty, longer than
// MaxStreamIDBytes, not UTF-8, or holding a NUL or another control
// character. The error wraps ErrInvalidStreamID.
func ValidateStreamID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidStreamID)
	case len(id) > MaxStreamIDBytes:
		return fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidStreamID, len(id), MaxStreamIDBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidStreamID, id)
	case hasControl(id):
		return fmt.Errorf("%w: %q holds a control character", ErrInvalidStreamID, id)
	}
	return nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// ValidateAppend checks an append before a store runs it: at least one
// stream, each named by a valid ID at most once, with a valid expectation
// and at least one event, each event with a valid ID (or none), type,
// schema version and metadata. Stores call it first, so bad input is refused
// whole, with an error wrapping ErrInvalidStreamID or ErrInvalidEvent, and
// nothing is written.
func ValidateAppend(appends []StreamAppend) error {
	if len(appends) == 0 {
		return fmt.Errorf("%w: no streams to append to", ErrInvalidEvent)
	}
	n := 0
	for i := range appends {
		n += len(appends[i].Events)
	}
	// Duplicates are looked for by pairs in small appends, with a map in
	// large ones.
	var ids map[string]bool
	if n > 16 {
		ids = make(map[string]bool, n)
	}
	for i := range appends {
		a := &appends[i]
		if err := ValidateStreamID(a.StreamID); err != nil {
			return err
		}
		for j := range i {
			if appends[j].StreamID == a.StreamID {
				return fmt.Errorf("%w: stream %q appears twice in one append", ErrInvalidEvent, a.StreamID)
			}
		}
		if !a.Expected.valid() {
			return fmt.Errorf("%w: stream %q: %v is not an expected version", ErrInvalidEvent, a.StreamID, a.Expected)
		}
		if len(a.Events) == 0 {
			return fmt.Errorf("%w: stream %q: no events", ErrInvalidEvent, a.StreamID)
		}
		for j := range a.Events {
			e := &a.Events[j]
			if why := eventProblem(e); why != "" {
				return fmt.Errorf("%w: stream %q, event %d: %s", ErrInvalidEvent, a.StreamID, j, why)
			}
			if e.ID == "" {
				continue
			}
			dup := false
			if ids != nil {
				dup = ids[e.ID]
				ids[e.ID] = true
			} else {
				dup = seenID(appends, i, j, e.ID)
			}
			if dup {
				return fmt.Errorf("%w: stream %q, event %d: ID %q appears twice in one append", ErrInvalidEvent, a.StreamID, j, e.ID)
			}
		}
	}
	return nil
}

// seenID reports whether an event before event j of stream i has ID id.
func seenID(appends []StreamAppend, i, j int, id string) bool {
	for x := 0; x <= i; x++ {
		evs := appends[x].Events
		if x == i {
			evs = evs[:j]
		}
		for _, e := range evs {
			if e.ID == id {
				return true
			}
		}
	}
	return false
}

// eventProblem says what is wrong with e, or "".
func eventProblem(e *EventData) string {
	switch {
	case len(e.ID) > MaxEventIDBytes:
		return fmt.Sprintf("ID of %d bytes, limit %d", len(e.ID), MaxEventIDBytes)
	case e.ID != "" && (!utf8.ValidString(e.ID) || hasControl(e.ID)):
		return fmt.Sprintf("ID %q is not printable UTF-8", e.ID)
	case e.Type == "":
		return "empty type"
	case len(e.Type) > MaxTypeBytes:
		return fmt.Sprintf("type of %d bytes, limit %d", len(e.Type), MaxTypeBytes)
	case !utf8.ValidString(e.Type) || hasControl(e.Type):
		return fmt.Sprintf("type %q is not printable UTF-8", e.Type)
	case e.SchemaVersion < 1:
		return fmt.Sprintf("schema version %d < 1", e.SchemaVersion)
	}
	for k, v := range e.Metadata {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) || strings.IndexByte(k, 0) >= 0 || strings.IndexByte(v, 0) >= 0 {
			return fmt.Sprintf("metadata entry %q is empty, not UTF-8 or holds NUL", k)
		}
	}
	return ""
}
