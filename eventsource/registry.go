package eventsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Codec encodes event payloads and snapshot states. JSON is the default;
// a Registry made with NewRegistryCodec uses another (protobuf, msgpack,
// ...). Unmarshal receives a pointer to a value of the registered type.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec: encoding/json.
type JSON struct{}

// Marshal implements Codec with json.Marshal.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec with json.Unmarshal.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Built-in event types, registered in every Registry. Type names starting
// with broker.ReservedHeaderPrefix ("steadfast-") are reserved for them.
const (
	// TypeStreamDeleted is the type of the tombstone DeleteStream appends.
	TypeStreamDeleted = broker.ReservedHeaderPrefix + "stream-deleted"
	// TypeStreamArchived is the type of the marker ArchiveStream appends.
	TypeStreamArchived = broker.ReservedHeaderPrefix + "stream-archived"
	// TypeStreamShredded is the type of the marker ShredStream appends.
	TypeStreamShredded = broker.ReservedHeaderPrefix + "stream-shredded"
)

// StreamDeleted is the tombstone event that Lifecycle.DeleteStream appends
// as a deleted stream's last event. Readers of the global log receive it
// (projections drop what they kept of the stream); stream loads never do,
// since a deleted stream cannot be loaded.
type StreamDeleted struct{}

// StreamArchived is the marker Lifecycle.ArchiveStream appends to a stream
// as it archives it: readers of the global log receive it (the stream's
// other events leave the log). Stream reads leave it out.
type StreamArchived struct{}

// StreamShredded is the marker Shredder.ShredStream appends to a stream
// that was open when it was shredded: readers of the global log receive it
// and can erase what they kept of the stream. Stream reads leave it out.
type StreamShredded struct{}

// IsMarker reports whether an event type is one of the markers that close
// a stream (archived, shredded), which stream reads leave out.
func IsMarker(typ string) bool { return typ == TypeStreamArchived || typ == TypeStreamShredded }

// Shredded is what a Registry decodes a record with Record.Shredded set
// into: a placeholder naming the stored type, since the payload is gone.
// Readers of the global log receive it, with the original metadata and
// positions; stream loads fail with ErrShredded instead.
type Shredded struct {
	Type          string
	SchemaVersion int
}

// Registry maps Go event types to stable type names and schema versions,
// encodes events with its Codec, and decodes stored events, upcasting older
// schema versions to the current one.
//
// Register every event type (and every older schema version you still have
// stored) and the upcasters between versions once, at start-up, before the
// registry is used; then it is safe for concurrent use. Registration errors
// are collected, not returned: Check reports them all, together with the
// problems of the upcaster graph, and NewRepository and NewReader call it.
type Registry struct {
	codec   Codec
	byKey   map[typeKey]*entry
	byGo    map[reflect.Type]*entry
	current map[string]int // name -> current (highest) version
	errs    []error
}

type typeKey struct {
	name    string
	version int
}

type entry struct {
	typeKey
	goType reflect.Type
	decode func(c Codec, data []byte) (any, error)
	// upcast converts a value of this entry into later forms; nil for a
	// current entry.
	upcast func(v any) ([]any, error)
	// to is the target of a one-to-one Upcast, resolved by Check; nil for
	// UpcastMany, whose outputs are only known when it runs.
	toType reflect.Type
	many   bool
}

// NewRegistry returns a registry that encodes with JSON.
func NewRegistry() *Registry { return NewRegistryCodec(JSON{}) }

// NewRegistryCodec returns a registry that encodes with c.
func NewRegistryCodec(c Codec) *Registry {
	r := &Registry{codec: c, byKey: map[typeKey]*entry{}, byGo: map[reflect.Type]*entry{}, current: map[string]int{}}
	if c == nil {
		r.codec = JSON{}
	}
	register[StreamDeleted](r, TypeStreamDeleted, 1, true)
	register[StreamArchived](r, TypeStreamArchived, 1, true)
	register[StreamShredded](r, TypeStreamShredded, 1, true)
	return r
}

// Codec returns the registry's codec.
func (r *Registry) Codec() Codec { return r.codec }

// Register maps the Go type E to the type name and schema version. The
// highest version registered for a name is its current one: new events of
// that name are encoded from it, and stored events of lower versions are
// upcast to it (register an Upcast or UpcastMany from each lower version's
// type). E must be a concrete type (a struct, typically), distinct for each
// (name, version); events are passed and decoded as E values.
//
// Names are stable identifiers kept in the store: never reuse one for a
// different event, and never change a registered version's encoding.
// Names must be printable UTF-8 of at most MaxTypeBytes bytes and must not
// start with "steadfast-".
func Register[E any](r *Registry, name string, version int) {
	register[E](r, name, version, false)
}

func register[E any](r *Registry, name string, version int, builtin bool) {
	t := reflect.TypeFor[E]()
	fail := func(format string, args ...any) {
		r.errs = append(r.errs, fmt.Errorf("%w: register %v as %q version %d: %s",
			ErrInvalidRegistry, t, name, version, fmt.Sprintf(format, args...)))
	}
	switch {
	case name == "" || len(name) > MaxTypeBytes || !utf8.ValidString(name) || hasControl(name):
		fail("the name must be 1 to %d bytes of printable UTF-8", MaxTypeBytes)
		return
	case !builtin && strings.HasPrefix(name, broker.ReservedHeaderPrefix):
		fail("names starting with %q are reserved", broker.ReservedHeaderPrefix)
		return
	case version < 1:
		fail("versions start at 1")
		return
	case t.Kind() == reflect.Interface:
		fail("an interface type cannot be decoded into; register the concrete types")
		return
	}
	k := typeKey{name, version}
	if e := r.byKey[k]; e != nil {
		fail("already registered for %v", e.goType)
		return
	}
	if e := r.byGo[t]; e != nil {
		fail("%v is already registered as %q version %d", t, e.name, e.version)
		return
	}
	e := &entry{typeKey: k, goType: t, decode: func(c Codec, data []byte) (any, error) {
		var v E
		if len(data) > 0 {
			if err := c.Unmarshal(data, &v); err != nil {
				return nil, err
			}
		}
		return v, nil
	}}
	r.byKey[k] = e
	r.byGo[t] = e
	if version > r.current[name] {
		r.current[name] = version
	}
}

// Upcast registers fn as the upcaster of the schema version registered for
// From: a stored event of that version is decoded into a From and fn's
// result replaces it. To must be registered too, as a later version of the
// same name or as another name (a rename); if To is itself an older version,
// its own upcaster runs next, and so on, until the current version.
// Upcasters run on every read path: stream loads, the global log reader,
// projections, and the events snapshots are built from.
func Upcast[From, To any](r *Registry, fn func(From) To) {
	addUpcaster[From](r, reflect.TypeFor[To](), false, func(v any) ([]any, error) {
		return []any{fn(v.(From))}, nil
	})
}

// UpcastMany registers fn as the upcaster of From's schema version, for an
// event that becomes several events (a split), none (a dropped event), or
// another type known only at run time. Every value fn returns must be of a
// registered type; values of older versions are upcast further. An error
// from fn makes the event undecodable (ErrUndecodable).
func UpcastMany[From any](r *Registry, fn func(From) ([]any, error)) {
	addUpcaster[From](r, nil, true, func(v any) ([]any, error) { return fn(v.(From)) })
}

func addUpcaster[From any](r *Registry, to reflect.Type, many bool, fn func(any) ([]any, error)) {
	t := reflect.TypeFor[From]()
	e := r.byGo[t]
	if e == nil {
		r.errs = append(r.errs, fmt.Errorf("%w: upcaster from %v: register %v first", ErrInvalidRegistry, t, t))
		return
	}
	if e.upcast != nil {
		r.errs = append(r.errs, fmt.Errorf("%w: %q version %d has two upcasters", ErrInvalidRegistry, e.name, e.version))
		return
	}
	e.upcast, e.toType, e.many = fn, to, many
}

// Check verifies the registry as a whole and returns every problem found,
// joined, each wrapping ErrInvalidRegistry: registration errors; a name whose
// versions have a gap (1 and 3 registered, not 2); an older version without
// an upcaster; an upcaster from a current version; an upcaster whose target
// is not registered; a cycle of upcasters. When it returns nil, every
// registered version decodes and upcasts to a current version (outputs of
// UpcastMany are checked when it runs).
func (r *Registry) Check() error {
	errs := slices.Clone(r.errs)
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s", ErrInvalidRegistry, fmt.Sprintf(format, args...)))
	}
	keys := make([]typeKey, 0, len(r.byKey))
	for k := range r.byKey {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].name != keys[j].name {
			return keys[i].name < keys[j].name
		}
		return keys[i].version < keys[j].version
	})
	// Gaps: versions of a name must be contiguous from the lowest to the
	// current.
	for i := 1; i < len(keys); i++ {
		if keys[i].name == keys[i-1].name && keys[i].version != keys[i-1].version+1 {
			bad("%q: versions %d and %d are registered but not %d (a gap in the upcaster chain)",
				keys[i].name, keys[i-1].version, keys[i].version, keys[i-1].version+1)
		}
	}
	for _, k := range keys {
		e := r.byKey[k]
		cur := r.current[k.name] == k.version
		switch {
		case cur && e.upcast != nil:
			bad("%q version %d is the current version; an upcaster from it would never run", k.name, k.version)
		case !cur && e.upcast == nil:
			bad("%q version %d (%v) has no upcaster to version %d: stored events of it could not be read",
				k.name, k.version, e.goType, k.version+1)
		case e.upcast != nil && !e.many && r.byGo[e.toType] == nil:
			bad("the upcaster from %q version %d produces %v, which is not registered", k.name, k.version, e.toType)
		}
	}
	// Cycles along one-to-one upcasters.
	for _, k := range keys {
		seen := map[*entry]bool{}
		for e := r.byKey[k]; e != nil && e.upcast != nil && !e.many; e = r.byGo[e.toType] {
			if seen[e] {
				bad("the upcasters from %q version %d form a cycle", k.name, k.version)
				break
			}
			seen[e] = true
		}
	}
	return errors.Join(errs...)
}

// Types returns every registered type name, sorted.
func (r *Registry) Types() []string {
	names := make([]string, 0, len(r.current))
	for n := range r.current {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TypeOf returns the type name and schema version v is registered as.
func (r *Registry) TypeOf(v any) (name string, version int, ok bool) {
	e := r.byGo[reflect.TypeOf(v)]
	if e == nil {
		return "", 0, false
	}
	return e.name, e.version, true
}

// Encode encodes the event v, which must be of a registered type at its
// current version, and attaches the metadata of ctx (WithMetadata) and its
// trace context (W3C traceparent). The ID is left empty (the store draws a
// UUIDv7) and Time zero (the store's clock). The error wraps ErrUnregistered
// for a type that is not registered or superseded.
func (r *Registry) Encode(ctx context.Context, v any) (EventData, error) {
	t := reflect.TypeOf(v)
	e := r.byGo[t]
	if e == nil {
		return EventData{}, fmt.Errorf("%w: %v (register it with eventsource.Register)", ErrUnregistered, t)
	}
	if cur := r.current[e.name]; cur != e.version {
		return EventData{}, fmt.Errorf("%w: %v is %q version %d, superseded by version %d", ErrUnregistered, t, e.name, e.version, cur)
	}
	data, err := r.codec.Marshal(v)
	if err != nil {
		return EventData{}, fmt.Errorf("eventsource: encode %q: %w", e.name, err)
	}
	return EventData{Type: e.name, SchemaVersion: e.version, Data: data, Metadata: contextMetadata(ctx)}, nil
}

// contextMetadata returns the metadata of ctx with its trace context, or
// nil when there is none.
func contextMetadata(ctx context.Context) Metadata {
	md := MetadataFrom(ctx)
	h := telemetry.Inject(ctx, md)
	if len(h) == 0 {
		return nil
	}
	return Metadata(h)
}

// Decode decodes a stored record into its event values at their current
// schema versions: usually one value; several or none when an upcaster
// split or dropped the event. A shredded record decodes into a Shredded
// placeholder. An unregistered type or version fails with an
// *UnknownEventError, a payload or upcaster failure with a *DecodeError.
func (r *Registry) Decode(rec Record) ([]any, error) {
	var out []any
	err := r.each(&rec, func(v any, _ *entry) error {
		out = append(out, v)
		return nil
	})
	return out, err
}

// each decodes rec and calls f with every resulting value and its entry.
func (r *Registry) each(rec *Record, f func(v any, e *entry) error) error {
	if rec.Shredded {
		return f(Shredded{Type: rec.Type, SchemaVersion: rec.SchemaVersion}, nil)
	}
	e := r.byKey[typeKey{rec.Type, rec.SchemaVersion}]
	if e == nil {
		return &UnknownEventError{Type: rec.Type, SchemaVersion: rec.SchemaVersion,
			StreamID: rec.StreamID, Version: rec.Version, Position: rec.Position}
	}
	v, err := e.decode(r.codec, rec.Data)
	if err != nil {
		return r.decodeError(rec, err)
	}
	if e.upcast == nil {
		return f(v, e)
	}
	return r.upcast(rec, v, e, 0, f)
}

// upcast runs e's upcaster on v and passes on every current result. depth
// guards against cycles through UpcastMany, which Check cannot see.
func (r *Registry) upcast(rec *Record, v any, e *entry, depth int, f func(any, *entry) error) error {
	if depth > len(r.byKey) {
		return r.decodeError(rec, fmt.Errorf("upcasters from %q version %d loop", e.name, e.version))
	}
	outs, err := e.upcast(v)
	if err != nil {
		return r.decodeError(rec, fmt.Errorf("upcast %q version %d: %w", e.name, e.version, err))
	}
	for _, o := range outs {
		oe := r.byGo[reflect.TypeOf(o)]
		if oe == nil {
			return r.decodeError(rec, fmt.Errorf("upcast %q version %d produced %T, which is not registered", e.name, e.version, o))
		}
		if oe.upcast == nil {
			if err := f(o, oe); err != nil {
				return err
			}
			continue
		}
		if err := r.upcast(rec, o, oe, depth+1, f); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) decodeError(rec *Record, err error) error {
	return &DecodeError{Type: rec.Type, SchemaVersion: rec.SchemaVersion, StreamID: rec.StreamID,
		Version: rec.Version, Position: rec.Position, Err: err}
}

// storedTypes returns the stored type names whose events can decode into
// one of the given current names: the names themselves and every name whose
// upcasters lead to them. An UpcastMany's outputs are unknown, so its
// source name is always included.
func (r *Registry) storedTypes(names []string) []string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var out []string
	for k, e := range r.byKey {
		ok := want[k.name]
		for x, n := e, 0; !ok && x != nil && x.upcast != nil && n <= len(r.byKey); x, n = r.byGo[x.toType], n+1 {
			if x.many {
				ok = true
				break
			}
			if t := r.byGo[x.toType]; t != nil && want[t.name] {
				ok = true
			}
		}
		if ok && !slices.Contains(out, k.name) {
			out = append(out, k.name)
		}
	}
	sort.Strings(out)
	return out
}
