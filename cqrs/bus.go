package cqrs

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/eventsource"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Kind says whether a Request is a command or a query.
type Kind int

// Kinds of requests.
const (
	KindCommand Kind = iota + 1
	KindQuery
)

func (k Kind) String() string {
	switch k {
	case KindCommand:
		return "command"
	case KindQuery:
		return "query"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Result is what a command handler returns: where the events the command
// caused reached in the global log, for read-your-writes (Wait). The zero
// Result means the command caused no events.
type Result struct {
	// Position is the global position of the command's last event.
	Position eventsource.Position `json:"position"`
	// StreamID and Version are the stream the command wrote and its
	// version after it, when the handler sets them.
	StreamID string `json:"stream_id,omitempty"`
	Version  int64  `json:"version,omitempty"`
}

// Request is a command or query on its way to its handler, as middleware
// sees it.
type Request struct {
	Kind Kind
	// Name is the name the type was registered with.
	Name string
	// Value is the command or query (of the registered Go type).
	Value any

	rt *route
}

// Dispatch delivers a request to its handler and returns the handler's
// result: a Result for a command, the query's result for a query.
type Dispatch func(ctx context.Context, r Request) (any, error)

// Middleware wraps the dispatch of every request of a Bus: validation,
// logging, tracing, authorization.
type Middleware func(Dispatch) Dispatch

// Bus routes typed commands and queries to their one handler each, in
// process, through its middleware. It is safe for concurrent use;
// registration is usually done at start-up.
//
// A command type has exactly one handler, which returns a Result; a query
// type has exactly one handler, which returns a typed result. Each type is
// registered under a stable name, which is how it travels over a broker
// (Serve, Client). Sending a command or query no handler is registered for
// fails with an error wrapping ErrUnregistered.
type Bus struct {
	mu     sync.RWMutex
	byType map[reflect.Type]*route
	byName map[string]*route
	mw     []Middleware
	chain  Dispatch
}

type route struct {
	kind Kind
	name string
	typ  reflect.Type
	call func(context.Context, any) (any, error)
	// decode decodes a payload from the wire into a value of typ.
	decode func([]byte) (any, error)
}

// NewBus returns a bus whose requests pass through mw, the first outermost.
func NewBus(mw ...Middleware) *Bus {
	b := &Bus{byType: map[reflect.Type]*route{}, byName: map[string]*route{}, mw: mw}
	d := Dispatch(b.deliver)
	for i := len(mw) - 1; i >= 0; i-- {
		if mw[i] != nil {
			d = mw[i](d)
		}
	}
	b.chain = d
	return b
}

func (b *Bus) deliver(ctx context.Context, r Request) (any, error) {
	rt := r.rt
	if rt == nil || rt.name != r.Name {
		b.mu.RLock()
		rt = b.byName[r.Name]
		b.mu.RUnlock()
	}
	if rt == nil || rt.kind != r.Kind {
		return nil, fmt.Errorf("%w: %s %q", ErrUnregistered, r.Kind, r.Name)
	}
	return rt.call(ctx, r.Value)
}

func (b *Bus) add(rt *route) error {
	if rt.name == "" {
		return fmt.Errorf("%w: empty %s name", ErrInvalidConfig, rt.kind)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.byType[rt.typ]; old != nil {
		return fmt.Errorf("%w: %s type %v (as %q)", ErrDuplicateHandler, rt.kind, rt.typ, old.name)
	}
	if old := b.byName[rt.name]; old != nil {
		return fmt.Errorf("%w: name %q (type %v)", ErrDuplicateHandler, rt.name, old.typ)
	}
	b.byType[rt.typ], b.byName[rt.name] = rt, rt
	return nil
}

func decoder[T any](codec eventsource.Codec) func([]byte) (any, error) {
	return func(p []byte) (any, error) {
		var v T
		if err := codec.Unmarshal(p, &v); err != nil {
			return nil, fmt.Errorf("%w: %v: %w", ErrInvalidMessage, reflect.TypeFor[T](), err)
		}
		return v, nil
	}
}

// HandleCommand registers h as the handler of commands of type C, under
// name. A second handler for C or for name fails with ErrDuplicateHandler.
func HandleCommand[C any](b *Bus, name string, h func(context.Context, C) (Result, error)) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler for command %q", ErrInvalidConfig, name)
	}
	return b.add(&route{kind: KindCommand, name: name, typ: reflect.TypeFor[C](),
		call: func(ctx context.Context, v any) (any, error) {
			c, ok := v.(C)
			if !ok {
				return nil, fmt.Errorf("%w: command %q: got %T", ErrInvalidMessage, name, v)
			}
			return h(ctx, c)
		}, decode: decoder[C](eventsource.JSON{})})
}

// HandleQuery registers h as the handler of queries of type Q, under name.
// A second handler for Q or for name fails with ErrDuplicateHandler.
func HandleQuery[Q, R any](b *Bus, name string, h func(context.Context, Q) (R, error)) error {
	if h == nil {
		return fmt.Errorf("%w: nil handler for query %q", ErrInvalidConfig, name)
	}
	return b.add(&route{kind: KindQuery, name: name, typ: reflect.TypeFor[Q](),
		call: func(ctx context.Context, v any) (any, error) {
			q, ok := v.(Q)
			if !ok {
				return nil, fmt.Errorf("%w: query %q: got %T", ErrInvalidMessage, name, v)
			}
			return h(ctx, q)
		}, decode: decoder[Q](eventsource.JSON{})})
}

func (b *Bus) routeOf(t reflect.Type, kind Kind) (*route, error) {
	b.mu.RLock()
	rt := b.byType[t]
	b.mu.RUnlock()
	if rt == nil || rt.kind != kind {
		return nil, fmt.Errorf("%w: %s type %v", ErrUnregistered, kind, t)
	}
	return rt, nil
}

// Send dispatches cmd to the handler registered for C, through the bus's
// middleware, and returns its Result. A command type with no handler fails
// with ErrUnregistered.
func Send[C any](ctx context.Context, b *Bus, cmd C) (Result, error) {
	rt, err := b.routeOf(reflect.TypeFor[C](), KindCommand)
	if err != nil {
		return Result{}, err
	}
	v, err := b.chain(ctx, Request{Kind: KindCommand, Name: rt.name, Value: cmd, rt: rt})
	if err != nil {
		return Result{}, err
	}
	res, _ := v.(Result)
	return res, nil
}

// Ask dispatches q to the handler registered for Q, through the bus's
// middleware, and returns its result. A query type with no handler fails
// with ErrUnregistered; a handler registered with another result type fails
// with ErrInvalidMessage.
func Ask[Q, R any](ctx context.Context, b *Bus, q Q) (R, error) {
	var zero R
	rt, err := b.routeOf(reflect.TypeFor[Q](), KindQuery)
	if err != nil {
		return zero, err
	}
	v, err := b.chain(ctx, Request{Kind: KindQuery, Name: rt.name, Value: q, rt: rt})
	if err != nil {
		return zero, err
	}
	r, ok := v.(R)
	if !ok && v != nil {
		return zero, fmt.Errorf("%w: query %q returns %T, not %v", ErrInvalidMessage, rt.name, v, reflect.TypeFor[R]())
	}
	return r, nil
}

// dispatchWire decodes a payload received for name and dispatches it.
func (b *Bus) dispatchWire(ctx context.Context, kind Kind, name string, payload []byte) (any, error) {
	b.mu.RLock()
	rt := b.byName[name]
	b.mu.RUnlock()
	if rt == nil || rt.kind != kind {
		return nil, fmt.Errorf("%w: %s %q", ErrUnregistered, kind, name)
	}
	v, err := rt.decode(payload)
	if err != nil {
		return nil, err
	}
	return b.chain(ctx, Request{Kind: kind, Name: name, Value: v, rt: rt})
}

// Validate is middleware that calls the Validate() error method of every
// command or query that has one, and refuses the request with an error
// wrapping ErrValidation and Validate's error when it fails.
func Validate() Middleware {
	return func(next Dispatch) Dispatch {
		return func(ctx context.Context, r Request) (any, error) {
			if v, ok := r.Value.(interface{ Validate() error }); ok {
				if err := v.Validate(); err != nil {
					return nil, fmt.Errorf("%w: %s %q: %w", ErrValidation, r.Kind, r.Name, err)
				}
			}
			return next(ctx, r)
		}
	}
}

// Logging is middleware that logs each request at debug level and each
// failure at warn level, with its kind, name and duration. A nil logger is
// slog.Default().
func Logging(l *slog.Logger) Middleware {
	l = telemetry.Logger(l)
	return func(next Dispatch) Dispatch {
		return func(ctx context.Context, r Request) (any, error) {
			start := time.Now()
			v, err := next(ctx, r)
			if err != nil {
				l.WarnContext(ctx, "cqrs: "+r.Kind.String()+" failed", "name", r.Name, "duration", time.Since(start), "error", err)
			} else {
				l.DebugContext(ctx, "cqrs: "+r.Kind.String()+" handled", "name", r.Name, "duration", time.Since(start))
			}
			return v, err
		}
	}
}

// Tracing is middleware that runs each request in a span named
// "<kind> <name>" (e.g. "command account.deposit") of the tracer provider
// (nil: the OpenTelemetry global one), recording failures.
func Tracing(tp trace.TracerProvider) Middleware {
	tr := telemetry.Tracer(tp, "cqrs")
	return func(next Dispatch) Dispatch {
		return func(ctx context.Context, r Request) (any, error) {
			ctx, span := tr.Start(ctx, r.Kind.String()+" "+r.Name, trace.WithAttributes(
				attribute.String("steadfast.cqrs.kind", r.Kind.String()), attribute.String("steadfast.cqrs.name", r.Name)))
			defer span.End()
			v, err := next(ctx, r)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			return v, err
		}
	}
}

// DeciderHandler returns a command handler that runs cmd through repo (load,
// decide, append; see eventsource.Repository.Handle) on the stream stream(cmd)
// names, and returns the position its events reached.
func DeciderHandler[S, C, E any](repo *eventsource.Repository[S, C, E], stream func(C) string) func(context.Context, C) (Result, error) {
	return func(ctx context.Context, cmd C) (Result, error) {
		id := stream(cmd)
		res, err := repo.Handle(ctx, id, cmd)
		if err != nil {
			return Result{}, err
		}
		return Result{Position: res.Position(), StreamID: id, Version: res.Version}, nil
	}
}
