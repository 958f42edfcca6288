package brokerimpl

import (
	"strings"

	"github.com/steadfast-go/steadfast/broker"
)

// escapedHeaderPrefix marks, on the wire, a message header whose own name
// starts with broker.ReservedHeaderPrefix: "steadfast-x" travels as
// "steadfast-u-steadfast-x".
const escapedHeaderPrefix = broker.ReservedHeaderPrefix + "u-"

// WireHeader returns the name message header k travels under: k itself, or
// k escaped when it starts with broker.ReservedHeaderPrefix, so that no
// message header can pass for one of the adapter's own wire headers.
func WireHeader(k string) string {
	if strings.HasPrefix(k, broker.ReservedHeaderPrefix) {
		return escapedHeaderPrefix + k
	}
	return k
}

// MessageHeader is the inverse of WireHeader for a header read from the
// wire that is not one of the adapter's own: it returns the message
// header's name and true, or "" and false for a reserved name that is not
// an escaped message header (a wire header of a newer version, or one
// written by another client), which is dropped rather than delivered.
func MessageHeader(wire string) (string, bool) {
	if !strings.HasPrefix(wire, broker.ReservedHeaderPrefix) {
		return wire, true
	}
	if strings.HasPrefix(wire, escapedHeaderPrefix) {
		return wire[len(escapedHeaderPrefix):], true
	}
	return "", false
}
