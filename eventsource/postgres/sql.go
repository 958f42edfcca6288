package postgres

import (
	"strings"

	"github.com/steadfast-go/steadfast/eventsource"
)

// statements holds the SQL of one store, built once by New.
type statements struct {
	// append[kind][several events][notify] appends to one stream.
	append       [kinds][2][2]string
	diagStreams  string
	diagEvents   string
	readStream   string
	readBackward string
	streamState  string
	asOfTime     string
	readLog      string
	blocker      string
	prepared     string
	getKeys      string
	streamKey    string
	saveSnapshot string
	loadSnapshot string
	truncate     string
	archive      string
	shred        string
}

// Stream states, kept in the streams table for closed streams only: an
// open stream has no row there.
const (
	stateOpen     = 0
	stateDeleted  = 1
	stateArchived = 2
	stateShredded = 3
)

// notifying turns an append statement ending in "SELECT ... FROM ins" into
// one that also sends a notification on param when it inserted rows. The
// uncorrelated subquery is an InitPlan: it runs once, before the first row
// is returned, after ins has run.
func notifying(q, param string) string {
	return strings.Replace(q, "\nSELECT ins.", "\n, n AS (SELECT pg_notify("+param+", '') FROM (SELECT 1 FROM ins LIMIT 1) x)\nSELECT ins.", 1) +
		"\nWHERE (SELECT count(*) FROM n) >= 0"
}

func buildStatements(t tables) statements {
	r := strings.NewReplacer("{events}", t.events, "{streams}", t.streams, "{snapshots}", t.snapshots,
		"{keys}", t.keys, "{archive}", t.archive,
		"{seq_literal}", "'"+strings.ReplaceAll(t.seq, "'", "''")+"'",
		"{markers}", "'"+markerArchived+"', '"+markerShredded+"'",
		"{builtin}", "'"+eventsource.TypeStreamDeleted+"', '"+markerArchived+"', '"+markerShredded+"'")
	s := func(q string) string { return r.Replace(q) }
	st := statements{
		// Why an append stored nothing: each stream's state, last version
		// (its last event, or its archive's), and whether its last event
		// belongs to a transaction numbered after this one.
		diagStreams: s(`SELECT x.stream_id,
       coalesce((SELECT c.state FROM {streams} c WHERE c.stream_id = x.stream_id), 0),
       coalesce(l.version, (SELECT max(a.version) FROM {archive} a WHERE a.stream_id = x.stream_id), 0),
       coalesce(l.transaction_id > pg_current_xact_id_if_assigned(), false)
FROM unnest($1::text[]) AS x(stream_id)
LEFT JOIN LATERAL (
    SELECT e.version, e.transaction_id FROM {events} e WHERE e.stream_id = x.stream_id ORDER BY e.version DESC LIMIT 1
) l ON true`),

		diagEvents: s(`SELECT e.event_id, e.stream_id, e.version, e.position, e.transaction_id
FROM unnest($1::text[]) AS u(id) CROSS JOIN LATERAL (
    SELECT event_id, stream_id, version, position, transaction_id FROM {events} WHERE event_id = u.id
    UNION ALL
    SELECT event_id, stream_id, version, position, transaction_id FROM {archive} WHERE event_id = u.id
) e`),

		// A stream read: the events between versions $2 and $3, at most $4
		// (NULL: all), with the stream's state and key; from the archive
		// when archived; without the markers of archiving and shredding.
		// $5 leaves the metadata out. No rows: the caller reads the
		// stream's state (streamState).
		readStream:   s(streamReadSQL("ASC")),
		readBackward: s(streamReadSQL("DESC")),
		streamState: s(`SELECT coalesce((SELECT state FROM {streams} WHERE stream_id = $1), 0),
       EXISTS (SELECT 1 FROM {events} WHERE stream_id = $1 AND type NOT IN ({markers}))
           OR EXISTS (SELECT 1 FROM {archive} WHERE stream_id = $1)`),

		asOfTime: s(`SELECT coalesce(max(v), 0) FROM (
    SELECT version FROM {events} WHERE stream_id = $1 AND occurred_at <= $2
    UNION ALL
    SELECT version FROM {archive} WHERE stream_id = $1 AND occurred_at <= $2
) x(v)`),

		readLog: s(`WITH f AS MATERIALIZED (
    SELECT x.fence, x.next_xid, pg_sequence_last_value({seq_literal}::regclass) AS last_seq,
           EXISTS (SELECT 1 FROM {events} b WHERE b.transaction_id >= x.fence) AS held,
           EXISTS (SELECT 1 FROM {events} b WHERE b.transaction_id >= x.next_xid) AS future
    FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS fence,
                 pg_snapshot_xmax(pg_current_snapshot()) AS next_xid) x
)
SELECT f.fence, f.next_xid, f.last_seq, f.held, f.future,
       e.position, e.transaction_id, e.stream_id, e.version, e.event_id, e.type, e.schema_version,
       e.data, e.metadata, e.occurred_at, e.encrypted,
       CASE WHEN e.encrypted THEN (SELECT k.key FROM {keys} k WHERE k.stream_id = e.stream_id) END
FROM f LEFT JOIN LATERAL (
    SELECT * FROM {events} e
    WHERE (e.transaction_id, e.position) > ($1::xid8, $2::bigint) AND e.transaction_id < f.fence
      AND ($4::text[] IS NULL OR e.stream_id ^@ ANY ($4::text[]))
      AND ($5::text[] IS NULL OR e.type = ANY ($5::text[]))
    ORDER BY e.transaction_id, e.position
    LIMIT $3
) e ON true`),

		blocker: `SELECT pid, xact_start, coalesce(state, ''), coalesce(application_name, ''), coalesce(left(query, 200), '')
FROM pg_stat_activity WHERE backend_xid = $1::xid8::xid LIMIT 1`,
		prepared: `SELECT gid, prepared FROM pg_prepared_xacts WHERE transaction = $1::xid8::xid LIMIT 1`,

		getKeys: s(`WITH ins AS (
    INSERT INTO {keys} (stream_id, key)
    SELECT * FROM unnest($1::text[], $2::bytea[])
    ON CONFLICT (stream_id) DO NOTHING
    RETURNING stream_id, key, true AS present
)
SELECT stream_id, key, present FROM ins
UNION ALL
SELECT k.stream_id, k.key, true FROM {keys} k
WHERE k.stream_id = ANY ($1::text[]) AND k.stream_id NOT IN (SELECT stream_id FROM ins)`),
		streamKey:   s(`SELECT key FROM {keys} WHERE stream_id = $1`),

		saveSnapshot: s(`INSERT INTO {snapshots} AS s (stream_id, version, event_id, schema_version, data, encrypted, taken_at)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE NOT EXISTS (SELECT 1 FROM {streams} c WHERE c.stream_id = $1 AND c.state IN (1, 3))
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, event_id = excluded.event_id,
    schema_version = excluded.schema_version, data = excluded.data, encrypted = excluded.encrypted, taken_at = excluded.taken_at`),
		loadSnapshot: s(`SELECT s.version, s.event_id, s.schema_version, s.data, s.encrypted, s.taken_at, k.key
FROM {snapshots} s LEFT JOIN {keys} k ON k.stream_id = s.stream_id
WHERE s.stream_id = $1`),

		// Truncate: never the stream's last event (appends check the
		// version they expect against it).
		truncate: s(`WITH l AS (
    SELECT coalesce((SELECT max(version) FROM {events} WHERE stream_id = $1), 0) AS last,
           EXISTS (SELECT 1 FROM {archive} WHERE stream_id = $1) AS archived
), d AS (
    DELETE FROM {events} e USING l WHERE e.stream_id = $1 AND e.version < least($2::bigint, l.last) RETURNING 1
), a AS (
    DELETE FROM {archive} WHERE stream_id = $1 AND version < $2::bigint RETURNING 1
)
SELECT (SELECT last > 0 OR archived FROM l), (SELECT count(*) FROM d) + (SELECT count(*) FROM a)`),

		// Archive, after the marker was appended as version $2: move the
		// events before it.
		archive: s(`WITH moved AS (
    DELETE FROM {events} e WHERE e.stream_id = $1 AND e.version < $2::bigint
    RETURNING e.position, e.transaction_id, e.stream_id, e.version, e.event_id, e.type, e.schema_version,
              e.data, e.metadata, e.occurred_at, e.encrypted
)
INSERT INTO {archive} SELECT * FROM moved`),

		// Shred, after the marker (if the stream was open): delete the key
		// (keeping a NULL row, so the stream stays shredded), the snapshot,
		// and payloads stored in plain text.
		shred: s(`WITH k AS (
    INSERT INTO {keys} AS k (stream_id, key, shredded_at) VALUES ($1, NULL, now())
    ON CONFLICT (stream_id) DO UPDATE SET key = NULL, shredded_at = coalesce(k.shredded_at, now())
    RETURNING 1
), snap AS (
    DELETE FROM {snapshots} WHERE stream_id = $1 RETURNING 1
), e AS (
    UPDATE {events} SET data = NULL, encrypted = true
    WHERE stream_id = $1 AND (NOT encrypted OR data IS NOT NULL) AND type NOT IN ({builtin}) RETURNING 1
), a AS (
    UPDATE {archive} SET data = NULL, encrypted = true WHERE stream_id = $1 AND (NOT encrypted OR data IS NOT NULL) RETURNING 1
)
SELECT (SELECT count(*) FROM k) + (SELECT count(*) FROM snap) + (SELECT count(*) FROM e) + (SELECT count(*) FROM a)`),
	}
	for k := range kinds {
		for many := range 2 {
			q := s(appendSQL(appendKind(k), many == 1))
			st.append[k][many][0] = q
			st.append[k][many][1] = notifying(q, "$12")
		}
	}
	return st
}

const eventColumns = `e.version, e.position, e.transaction_id, e.event_id, e.type, e.schema_version, e.data,
           CASE WHEN $5::bool THEN NULL ELSE e.metadata END, e.occurred_at, e.encrypted`

func streamReadSQL(dir string) string {
	return `SELECT c.state, k.key, e.*
FROM (SELECT coalesce((SELECT state FROM {streams} WHERE stream_id = $1), 0) AS state) c
LEFT JOIN {keys} k ON k.stream_id = $1
JOIN LATERAL (
    SELECT * FROM (
        (SELECT ` + eventColumns + ` FROM {events} e
         WHERE c.state <> 2 AND e.stream_id = $1 AND e.version >= $2 AND e.version <= $3 AND e.type NOT IN ({markers}))
        UNION ALL
        (SELECT ` + eventColumns + ` FROM {archive} e
         WHERE c.state = 2 AND e.stream_id = $1 AND e.version >= $2 AND e.version <= $3)
    ) e ORDER BY e.version ` + dir + ` LIMIT $4
) e ON true`
}

// appendKind is the expectation of an append, each with its own statement,
// so that every statement's plan is the same whatever its parameters and
// PostgreSQL settles on one generic plan for it instead of planning every
// call anew.
type appendKind int

const (
	kindExact    appendKind = iota // ExpectedVersion(n), n >= 1
	kindExists                     // StreamExists
	kindNoStream                   // NoStream
	kindAny                        // AnyVersion
	kinds
)

func kindOf(e int64) appendKind {
	switch {
	case e > 0:
		return kindExact
	case e == -2:
		return kindExists
	case e == 0:
		return kindNoStream
	}
	return kindAny
}

// appendSQL is the append of one stream, in one statement, and inserts
// only: no row is updated, so appends stay as cheap as inserts even while a
// long transaction elsewhere on the server keeps PostgreSQL from pruning
// old row versions (a row updated on every append would grow a chain of
// versions that each update walks).
//
// The primary key (stream_id, version) decides between concurrent
// appenders. The statement computes the stream's version as its snapshot
// sees it (base): the expected version when exact (checking that the event
// there exists), the last event's otherwise. It inserts the first event at
// base+1 with ON CONFLICT DO NOTHING, only if the stream is not closed (no
// row in the streams table) and its last event belongs to a transaction
// numbered at most this one (the global log orders by transaction, so a
// stream's appends must come in transaction order). If another appender
// took base+1, whether it committed before the snapshot or commits while
// this statement waits for it, the insert does nothing, nor do the other
// events, which are inserted only after the first one: the statement
// returns no rows, raises nothing, and the caller's transaction stays
// usable. Once the first event is in, no one else can insert after it
// before this transaction ends, so the others cannot conflict. A conflict
// on an event ID of the first event also does nothing (the caller then
// finds out why); on another event's ID it raises a unique violation.
//
// Any and Exists appends, which would succeed again when retried after
// their first attempt committed, first look the event IDs up, one index
// probe each (a scalar subquery, which the planner cannot turn into a hash
// of the whole table as it would an EXISTS or = ANY).
//
// Parameters: $1 stream, $2 expected version, $3 event count, $4 the state
// a marker closes the stream with (0 for events; 1 tombstone, 2 archive
// marker, 3 shred marker: the streams table gets its row), $5 encrypted,
// then the event columns $6 ID, $7 type, $8 schema version, $9 data, $10
// metadata (text, NULL for none), $11 time (NULL: now()): scalars for one
// event, arrays for several. Rows of several events come from
// generate_subscripts rather than unnest, whose row estimate follows the
// array's length and would also make PostgreSQL plan every call anew.
func appendSQL(kind appendKind, many bool) string {
	const open = `NOT EXISTS (SELECT 1 FROM {streams} c WHERE c.stream_id = $1)`
	var base string
	switch kind {
	case kindExact:
		base = `SELECT $2::bigint AS v, ` + open + `
           AND (SELECT e.transaction_id <= pg_current_xact_id() FROM {events} e
                WHERE e.stream_id = $1 AND e.version = $2::bigint) IS TRUE AS ok`
	case kindNoStream:
		base = `SELECT 0::bigint AS v, $2::bigint = 0 AND ` + open + ` AS ok`
	case kindExists, kindAny:
		want := `$2::bigint = -2 AND l.version IS NOT NULL`
		if kind == kindAny {
			want = `(l.version IS NOT NULL OR $2::bigint = -1)`
		}
		base = `SELECT coalesce(l.version, 0) AS v, ` + want + ` AND ` + open + `
           AND coalesce(l.transaction_id <= pg_current_xact_id(), true) AS ok
    FROM (SELECT 1) x LEFT JOIN LATERAL (
        SELECT e.version, e.transaction_id FROM {events} e WHERE e.stream_id = $1 ORDER BY e.version DESC LIMIT 1
    ) l ON true`
		if many {
			base += `
    WHERE NOT EXISTS (SELECT 1 FROM generate_subscripts($6::text[], 1) AS u(i)
                      WHERE (SELECT 1 FROM {events} d WHERE d.event_id = ($6::text[])[u.i]) IS NOT NULL
                         OR (SELECT 1 FROM {archive} a WHERE a.event_id = ($6::text[])[u.i]) IS NOT NULL)`
		} else {
			base += `
    WHERE (SELECT 1 FROM {events} d WHERE d.event_id = $6::text) IS NULL
      AND (SELECT 1 FROM {archive} a WHERE a.event_id = $6::text) IS NULL`
		}
	}
	const cols = `INSERT INTO {events} (stream_id, version, event_id, type, schema_version, data, metadata, occurred_at, encrypted)`
	first := `SELECT $1, base.v + 1, $6::text, $7::text, $8::int, $9::bytea, $10::text::jsonb, coalesce($11::timestamptz, now()), $5::bool
    FROM base WHERE base.ok`
	rest := ""
	if many {
		first = `SELECT $1, base.v + 1, ($6::text[])[1], ($7::text[])[1], ($8::int[])[1], ($9::bytea[])[1],
           ($10::text[])[1]::jsonb, coalesce(($11::timestamptz[])[1], now()), $5::bool
    FROM base WHERE base.ok`
		rest = `, rest AS (
    ` + cols + `
    SELECT $1, first.version - 1 + i, ($6::text[])[i], ($7::text[])[i], ($8::int[])[i], ($9::bytea[])[i],
           ($10::text[])[i]::jsonb, coalesce(($11::timestamptz[])[i], now()), $5::bool
    FROM first, generate_subscripts($6::text[], 1) AS i
    WHERE i > 1
    ORDER BY i
    RETURNING version, position, transaction_id
)`
	}
	ins := `ins AS (SELECT * FROM first)`
	if many {
		ins = `ins AS (SELECT * FROM first UNION ALL SELECT * FROM rest)`
	}
	return `WITH base AS (
    ` + base + `
), first AS (
    ` + cols + `
    ` + first + `
    ON CONFLICT DO NOTHING
    RETURNING version, position, transaction_id
)` + rest + `, closed AS (
    INSERT INTO {streams} (stream_id, state, version)
    SELECT $1, $4::smallint, first.version - 1 + $3::int FROM first WHERE $4::smallint <> 0
    RETURNING 1
), ` + ins + `
SELECT ins.version, ins.position, ins.transaction_id FROM ins`
}

// The markers of archiving and shredding, left out of stream reads.
const (
	markerArchived = eventsource.TypeStreamArchived
	markerShredded = eventsource.TypeStreamShredded
)
