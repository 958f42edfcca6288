package postgres

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/steadfast-go/steadfast/eventsource"
)

// minimalDecoder decodes the rows of a minimal stream read (the columns of
// streamReadSQL with minimalColumns) from their binary wire format, without
// pgx's per-column scan plans, and interns the event types: loading a long
// stream decodes little else. It is used only when every column came in the
// expected format (binary; text for text).
type minimalDecoder struct {
	types map[string]string
}

// minimalOIDs are the columns' types: state (int4), key (bytea), version
// (int8), event_id (text), type (text), schema_version (int4), data (bytea),
// encrypted (bool).
var minimalOIDs = [...]uint32{pgtype.Int4OID, pgtype.ByteaOID, pgtype.Int8OID, pgtype.TextOID, pgtype.TextOID,
	pgtype.Int4OID, pgtype.ByteaOID, pgtype.BoolOID}

func newMinimalDecoder(fields []pgconn.FieldDescription) *minimalDecoder {
	if len(fields) != len(minimalOIDs) {
		return nil
	}
	for i, f := range fields {
		// text is the same bytes in either format; pgx asks for it as text.
		if f.DataTypeOID != minimalOIDs[i] || (f.Format != pgtype.BinaryFormatCode && f.DataTypeOID != pgtype.TextOID) {
			return nil
		}
	}
	return &minimalDecoder{types: map[string]string{}}
}

// decode fills r from one row and returns the stream's state and key.
func (d *minimalDecoder) decode(vals [][]byte, r *eventsource.Record) (state int16, key []byte, err error) {
	if len(vals) != len(minimalOIDs) || len(vals[0]) != 4 || len(vals[2]) != 8 || len(vals[5]) != 4 || len(vals[7]) != 1 ||
		vals[3] == nil || vals[4] == nil {
		return 0, nil, fmt.Errorf("eventsource/postgres: unexpected row shape in a stream read")
	}
	state = int16(binary.BigEndian.Uint32(vals[0]))
	if vals[1] != nil {
		key = append([]byte(nil), vals[1]...)
	}
	r.Version = int64(binary.BigEndian.Uint64(vals[2]))
	r.ID = string(vals[3])
	t, ok := d.types[string(vals[4])]
	if !ok {
		t = string(vals[4])
		d.types[t] = t
	}
	r.Type = t
	r.SchemaVersion = int(int32(binary.BigEndian.Uint32(vals[5])))
	if vals[6] != nil {
		r.Data = append(make([]byte, 0, len(vals[6])), vals[6]...)
	}
	r.Shredded = vals[7][0] != 0
	return state, key, nil
}

// logDecoder decodes the rows of readLog from the wire, like
// minimalDecoder: a reader of the log decodes little else.
type logDecoder struct {
	jsonbBinary bool
	types       map[string]string
	streams     map[string]string
}

// logOIDs are readLog's columns: fence, next (xid8), last_seq (int8), held,
// future (bool), then the event: position (int8), transaction_id (xid8),
// stream_id (text), version (int8), event_id, type (text), schema_version
// (int4), data (bytea), metadata (jsonb), occurred_at (timestamptz),
// encrypted (bool), key (bytea).
var logOIDs = [...]uint32{pgtype.XID8OID, pgtype.XID8OID, pgtype.Int8OID, pgtype.BoolOID, pgtype.BoolOID,
	pgtype.Int8OID, pgtype.XID8OID, pgtype.TextOID, pgtype.Int8OID, pgtype.TextOID, pgtype.TextOID, pgtype.Int4OID,
	pgtype.ByteaOID, pgtype.JSONBOID, pgtype.TimestamptzOID, pgtype.BoolOID, pgtype.ByteaOID}

func newLogDecoder(fields []pgconn.FieldDescription) *logDecoder {
	if len(fields) != len(logOIDs) {
		return nil
	}
	d := &logDecoder{types: map[string]string{}, streams: map[string]string{}}
	for i, f := range fields {
		switch {
		case f.DataTypeOID != logOIDs[i]:
			return nil
		case f.DataTypeOID == pgtype.TextOID:
		case f.DataTypeOID == pgtype.JSONBOID:
			d.jsonbBinary = f.Format == pgtype.BinaryFormatCode
		case f.Format != pgtype.BinaryFormatCode:
			return nil
		}
	}
	return d
}

// pgEpoch is PostgreSQL's timestamp epoch in Unix microseconds.
const pgEpoch = 946684800 * 1000000

func (d *logDecoder) intern(m map[string]string, b []byte) string {
	if s, ok := m[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(m) < 4096 {
		m[s] = s
	}
	return s
}

// decode reads one row: the page's fence, next transaction ID, last
// sequence number (valid), held and future flags, and the event (ok false
// when the row has none), its metadata and key.
func (d *logDecoder) decode(vals [][]byte, page *eventsource.Page, next *uint64, lastSeq *pgtype.Int8, held, future *bool,
	r *eventsource.Record) (md, key []byte, ok bool, err error) {
	bad := func() ([]byte, []byte, bool, error) {
		return nil, nil, false, fmt.Errorf("eventsource/postgres: unexpected row shape in a log read")
	}
	if len(vals) != len(logOIDs) || len(vals[0]) != 8 || len(vals[1]) != 8 || len(vals[3]) != 1 || len(vals[4]) != 1 {
		return bad()
	}
	page.Fence = binary.BigEndian.Uint64(vals[0])
	*next = binary.BigEndian.Uint64(vals[1])
	*lastSeq = pgtype.Int8{}
	if vals[2] != nil {
		if len(vals[2]) != 8 {
			return bad()
		}
		*lastSeq = pgtype.Int8{Int64: int64(binary.BigEndian.Uint64(vals[2])), Valid: true}
	}
	*held, *future = vals[3][0] != 0, vals[4][0] != 0
	if vals[5] == nil {
		return nil, nil, false, nil
	}
	if len(vals[5]) != 8 || len(vals[6]) != 8 || vals[7] == nil || len(vals[8]) != 8 || vals[9] == nil || vals[10] == nil ||
		len(vals[11]) != 4 || len(vals[14]) != 8 || len(vals[15]) != 1 {
		return bad()
	}
	r.Position = eventsource.Position{Transaction: binary.BigEndian.Uint64(vals[6]), Sequence: int64(binary.BigEndian.Uint64(vals[5]))}
	r.StreamID = d.intern(d.streams, vals[7])
	r.Version = int64(binary.BigEndian.Uint64(vals[8]))
	r.ID = string(vals[9])
	r.Type = d.intern(d.types, vals[10])
	r.SchemaVersion = int(int32(binary.BigEndian.Uint32(vals[11])))
	if vals[12] != nil {
		r.Data = append(make([]byte, 0, len(vals[12])), vals[12]...)
	}
	if md = vals[13]; md != nil && d.jsonbBinary {
		if len(md) == 0 || md[0] != 1 {
			return bad()
		}
		md = md[1:]
	}
	us := int64(binary.BigEndian.Uint64(vals[14])) + pgEpoch
	r.Time = time.Unix(us/1000000, (us%1000000)*1000)
	r.Shredded = vals[15][0] != 0
	if vals[16] != nil {
		key = append([]byte(nil), vals[16]...)
	}
	return md, key, true, nil
}
