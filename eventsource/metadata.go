package eventsource

import (
	"context"
	"maps"

	"github.com/steadfast-go/steadfast/broker"
)

type metadataKey struct{}

// WithMetadata returns a context carrying md, merged over metadata ctx
// already carries (md's entries win). Events encoded with that context
// (Registry.Encode, Repository.Handle) carry it. Use it for correlation and
// causation IDs, or any per-request metadata.
func WithMetadata(ctx context.Context, md Metadata) context.Context {
	if len(md) == 0 {
		return ctx
	}
	merged := maps.Clone(MetadataFrom(ctx))
	if merged == nil {
		merged = make(Metadata, len(md))
	}
	maps.Copy(merged, md)
	return context.WithValue(ctx, metadataKey{}, merged)
}

// MetadataFrom returns the metadata ctx carries, or nil. The map must not
// be modified.
func MetadataFrom(ctx context.Context) Metadata {
	md, _ := ctx.Value(metadataKey{}).(Metadata)
	return md
}

// CausedBy returns a context whose events are caused by the message m (a
// command or event a consumer handles): their causation-id is m.ID and their
// correlation-id is m's correlation-id, or m.ID when m has none, so a whole
// conversation shares one correlation ID.
func CausedBy(ctx context.Context, m broker.Message) context.Context {
	corr := m.Header(broker.HeaderCorrelationID)
	if corr == "" {
		corr = m.ID
	}
	md := Metadata{broker.HeaderCausationID: m.ID}
	if corr != "" {
		md[broker.HeaderCorrelationID] = corr
	}
	return WithMetadata(ctx, md)
}

// CausedByEvent is CausedBy for a stored event (a process manager reacting
// to it): causation-id is the event's ID, correlation-id its correlation-id
// or its ID.
func CausedByEvent(ctx context.Context, r Record) context.Context {
	corr := r.Metadata.CorrelationID()
	if corr == "" {
		corr = r.ID
	}
	return WithMetadata(ctx, Metadata{broker.HeaderCausationID: r.ID, broker.HeaderCorrelationID: corr})
}
