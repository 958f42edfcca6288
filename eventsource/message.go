package eventsource

import (
	"fmt"
	"strconv"

	"github.com/steadfast-go/steadfast/broker"
)

// Headers the library writes on messages made from events (ToMessage),
// beside the well-known broker.HeaderType, broker.HeaderCorrelationID,
// broker.HeaderCausationID, broker.HeaderTraceparent and
// broker.HeaderTracestate, which carry the event's type and metadata.
const (
	HeaderStreamID      = broker.ReservedHeaderPrefix + "stream-id"
	HeaderStreamVersion = broker.ReservedHeaderPrefix + "stream-version"
	HeaderSchemaVersion = broker.ReservedHeaderPrefix + "schema-version"
	HeaderPosition      = broker.ReservedHeaderPrefix + "position"
)

// ToMessage maps a stored event to a broker message for topic: ID is the
// event ID (consumers deduplicate on it), Key the stream ID (per-stream
// order on every broker), Payload the encoded event, Time its time; the
// headers carry the type (broker.HeaderType), the schema version, stream ID
// and version, the global position, and every metadata entry (correlation,
// causation and trace context under their broker header names). FromMessage
// reverses it.
func ToMessage(topic string, r Record) broker.Message {
	h := make(map[string]string, len(r.Metadata)+5)
	for k, v := range r.Metadata {
		h[k] = v
	}
	h[broker.HeaderType] = r.Type
	h[HeaderSchemaVersion] = strconv.Itoa(r.SchemaVersion)
	h[HeaderStreamID] = r.StreamID
	h[HeaderStreamVersion] = strconv.FormatInt(r.Version, 10)
	h[HeaderPosition] = r.Position.String()
	return broker.Message{ID: r.ID, Topic: topic, Key: r.StreamID, Payload: r.Data, Headers: h, Time: r.Time}
}

// FromMessage rebuilds the record a message of ToMessage carries, for
// projectors fed by a broker subscription. Headers are wire data: a missing
// or malformed library header is an error wrapping ErrInvalidEvent. Headers
// other than the library's become the record's metadata.
func FromMessage(m broker.Message) (Record, error) {
	bad := func(why string) (Record, error) {
		return Record{}, fmt.Errorf("%w: message %q: %s", ErrInvalidEvent, m.ID, why)
	}
	r := Record{StreamID: m.Header(HeaderStreamID)}
	r.ID, r.Data, r.Time = m.ID, m.Payload, m.Time
	r.Type = m.Header(broker.HeaderType)
	if r.Type == "" {
		return bad("no " + broker.HeaderType + " header")
	}
	if err := ValidateStreamID(r.StreamID); err != nil {
		return bad(err.Error())
	}
	sv, err := strconv.Atoi(m.Header(HeaderSchemaVersion))
	if err != nil || sv < 1 {
		return bad("malformed " + HeaderSchemaVersion + " header")
	}
	r.SchemaVersion = sv
	if r.Version, err = strconv.ParseInt(m.Header(HeaderStreamVersion), 10, 64); err != nil || r.Version < 1 {
		return bad("malformed " + HeaderStreamVersion + " header")
	}
	if r.Position, err = ParsePosition(m.Header(HeaderPosition)); err != nil {
		return bad("malformed " + HeaderPosition + " header")
	}
	for k, v := range m.Headers {
		switch k {
		case broker.HeaderType, HeaderSchemaVersion, HeaderStreamID, HeaderStreamVersion, HeaderPosition:
			continue
		}
		if r.Metadata == nil {
			r.Metadata = Metadata{}
		}
		r.Metadata[k] = v
	}
	return r, nil
}
