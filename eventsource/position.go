package eventsource

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Position is an event's place in the global log, and the checkpoint a
// reader of the log stores.
//
// The log is ordered by Transaction, then Sequence. Transaction identifies
// the transaction that appended the event: on PostgreSQL its 64-bit
// transaction ID (xid8, never wrapping around), in the memory store a
// counter with the same meaning. Sequence is the event's global sequence
// number, drawn when it was written, so it increases within a transaction.
// Transactions are numbered when they first write, not when they commit,
// so a reader delivers a transaction's events only once every transaction
// that could still come before it has ended (see LogReader); the order it
// delivers is then final: no event is ever inserted before a position a
// reader has passed.
//
// Positions compare with Compare. The zero Position is before every event.
// A checkpoint may also be a position between events: {T, 0} means "every
// event of transactions before T", which a reader returns when it has read
// everything below its fence.
//
// A projector stores a checkpoint as two numbers (a PostgreSQL xid8 or
// numeric and a bigint, or two unsigned integers), as the text form of
// String and ParsePosition ("T:S", canonical decimal), or as the 16-byte
// binary form of MarshalBinary, whose byte order is the Position order.
type Position struct {
	// Transaction orders transactions (PostgreSQL: xid8 of the appending
	// transaction).
	Transaction uint64
	// Sequence orders the events of one transaction (global sequence number,
	// at least 1 for an event).
	Sequence int64
}

// Compare returns -1 if p is before q, 0 if they are equal, +1 if p is
// after q.
func (p Position) Compare(q Position) int {
	switch {
	case p.Transaction < q.Transaction:
		return -1
	case p.Transaction > q.Transaction:
		return 1
	case p.Sequence < q.Sequence:
		return -1
	case p.Sequence > q.Sequence:
		return 1
	}
	return 0
}

// Before reports whether p is before q.
func (p Position) Before(q Position) bool { return p.Compare(q) < 0 }

// IsZero reports whether p is the zero Position, before every event.
func (p Position) IsZero() bool { return p == Position{} }

// String returns the canonical text form "T:S" (decimal, no sign, no
// leading zeros), e.g. "745001:12".
func (p Position) String() string {
	b := make([]byte, 0, 32)
	return string(p.appendText(b))
}

func (p Position) appendText(b []byte) []byte {
	b = strconv.AppendUint(b, p.Transaction, 10)
	b = append(b, ':')
	return strconv.AppendInt(b, p.Sequence, 10)
}

// ParsePosition parses the text form written by String. It accepts only
// the canonical form, so a position and its text round-trip exactly.
func ParsePosition(s string) (Position, error) {
	bad := func(why string) (Position, error) {
		return Position{}, fmt.Errorf("eventsource: invalid position %q: %s", s, why)
	}
	t, q, ok := strings.Cut(s, ":")
	if !ok {
		return bad(`want "transaction:sequence"`)
	}
	if !canonical(t) || !canonical(q) {
		return bad("want two unsigned decimal numbers without leading zeros")
	}
	tx, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return bad("transaction out of range")
	}
	seq, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		return bad("sequence out of range")
	}
	return Position{Transaction: tx, Sequence: seq}, nil
}

func canonical(s string) bool {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// MarshalText implements encoding.TextMarshaler with the String form.
func (p Position) MarshalText() ([]byte, error) { return p.appendText(nil), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParsePosition.
func (p *Position) UnmarshalText(b []byte) error {
	q, err := ParsePosition(string(b))
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// MarshalBinary implements encoding.BinaryMarshaler: 16 bytes, Transaction
// then Sequence, big-endian, so comparing two encodings byte by byte (as
// bytes.Compare or PostgreSQL's bytea order do) gives the Position order.
func (p Position) MarshalBinary() ([]byte, error) {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, p.Transaction)
	binary.BigEndian.PutUint64(b[8:], uint64(p.Sequence))
	return b, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler for the form of
// MarshalBinary.
func (p *Position) UnmarshalBinary(b []byte) error {
	if len(b) != 16 {
		return fmt.Errorf("eventsource: invalid binary position: %d bytes, want 16", len(b))
	}
	seq := binary.BigEndian.Uint64(b[8:])
	if seq > 1<<63-1 {
		return fmt.Errorf("eventsource: invalid binary position: sequence out of range")
	}
	*p = Position{Transaction: binary.BigEndian.Uint64(b), Sequence: int64(seq)}
	return nil
}
