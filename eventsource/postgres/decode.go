package postgres

import (
	"encoding/binary"
	"fmt"

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
