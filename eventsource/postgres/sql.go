package postgres

import (
	"strings"

	"github.com/steadfast-go/steadfast/eventsource"
)

// statements holds the SQL of one store, built once by New.
type statements struct {
	// append[kind][several events][notify] appends to one stream.
	append      [kinds][2][2]string
	diagStreams string
	diagEvents  string
	// readStream[minimal][archive][backward] reads a stream.
	readStream   [2][2][2]string
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

// Stream states. A stream is closed by its last event: a tombstone
// (deleted), or the marker of archiving or shredding.
const (
	stateDeleted  = 1
	stateArchived = 2
	stateShredded = 3
)

// notifying turns an append statement ending in "SELECT ... FROM ins ..." into
// one that also sends a notification on param when it inserted rows. The
// uncorrelated subquery is an InitPlan: it runs once, before the first row
// is returned, after ins has run.
func notifying(q, param string) string {
	i := strings.LastIndex(q, "\nSELECT ")
	q = q[:i] + "\n, n AS (SELECT pg_notify(" + param + ", '') FROM (SELECT 1 FROM ins LIMIT 1) x)" + q[i:]
	if strings.HasSuffix(q, "HAVING count(*) > 0") {
		return strings.TrimSuffix(q, "HAVING count(*) > 0") + "HAVING count(*) > 0 AND (SELECT count(*) FROM n) >= 0"
	}
	return q + "\nWHERE (SELECT count(*) FROM n) >= 0"
}

func buildStatements(t tables) statements {
	r := strings.NewReplacer("{events}", t.events, "{snapshots}", t.snapshots,
		"{keys}", t.keys, "{archive}", t.archive,
		"{events_pkey}", t.name.Derived("_pkey"),
		"{seq_literal}", "'"+strings.ReplaceAll(t.seq, "'", "''")+"'",
		"{markers}", "'"+markerArchived+"', '"+markerShredded+"'",
		"{builtin}", "'"+eventsource.TypeStreamDeleted+"', '"+markerArchived+"', '"+markerShredded+"'",
		"{tombstone}", "'"+eventsource.TypeStreamDeleted+"'", "{archived}", "'"+markerArchived+"'", "{shredded}", "'"+markerShredded+"'")
	s := func(q string) string { return r.Replace(q) }
	st := statements{
		// Why an append stored nothing: each stream's state, last version
		// (its last event, or its archive's), and whether its last event
		// belongs to a transaction numbered after this one.
		diagStreams: s(`SELECT x.stream_id,
       CASE l.type WHEN {tombstone} THEN 1 WHEN {archived} THEN 2 WHEN {shredded} THEN 3 ELSE 0 END,
       coalesce(l.version, 0),
       coalesce(l.transaction_id > pg_current_xact_id_if_assigned(), false)
FROM unnest($1::text[]) AS x(stream_id)
LEFT JOIN LATERAL (
    SELECT e.version, e.transaction_id, e.type FROM {events} e WHERE e.stream_id = x.stream_id ORDER BY e.version DESC LIMIT 1
) l ON true`),

		diagEvents: s(`SELECT e.event_id, e.stream_id, e.version, e.position, e.transaction_id
FROM unnest($1::text[]) AS u(id) CROSS JOIN LATERAL (
    SELECT event_id, stream_id, version, position, transaction_id FROM {events} WHERE event_id = u.id
    UNION ALL
    SELECT event_id, stream_id, version, position, transaction_id FROM {archive} WHERE event_id = u.id
) e`),

		// A stream read: the events between versions $2 and $3, at most $4
		// (NULL: all), with the stream's state and key, without the markers
		// of archiving and shredding. No rows: the caller reads the
		// stream's state (streamState), and the archive when the stream is
		// archived.
		readStream: [2][2][2]string{
			{{s(streamReadSQL("{events}", "ASC", false)), s(streamReadSQL("{events}", "DESC", false))},
				{s(streamReadSQL("{archive}", "ASC", false)), s(streamReadSQL("{archive}", "DESC", false))}},
			{{s(streamReadSQL("{events}", "ASC", true)), s(streamReadSQL("{events}", "DESC", true))},
				{s(streamReadSQL("{archive}", "ASC", true)), s(streamReadSQL("{archive}", "DESC", true))}},
		},
		streamState: s(`SELECT ` + stateOf("$1") + `,
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
		streamKey: s(`SELECT key FROM {keys} WHERE stream_id = $1`),

		saveSnapshot: s(`INSERT INTO {snapshots} AS s (stream_id, version, event_id, schema_version, data, encrypted, taken_at)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE ` + stateOf("$1") + ` NOT IN (1, 3)
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
			st.append[k][many][1] = notifying(q, "$10")
			if many == 0 {
				st.append[k][many][0] = unwrapInsert(q)
			}
		}
	}
	return st
}

const eventColumns = `e.version, e.position, e.transaction_id, e.event_id, e.type, e.schema_version, e.data,
           e.metadata, e.occurred_at, e.encrypted`

// minimalColumns are the columns of a ReadOptions.Minimal read.
const minimalColumns = `e.version, e.event_id, e.type, e.schema_version, e.data, e.encrypted`

// streamReadSQL reads a stream's events from table (the events or the
// archive) in direction dir, one index scan whose rows stream to the client
// as they are found. The stream's state and key are uncorrelated scalar
// subqueries: computed once, before the first row.
func streamReadSQL(table, dir string, minimal bool) string {
	cols := eventColumns
	if minimal {
		cols = minimalColumns
	}
	markers := ""
	if table == "{events}" {
		markers = ` AND e.type NOT IN ({markers})`
	}
	return `SELECT ` + stateOf("$1") + `, (SELECT k.key FROM {keys} k WHERE k.stream_id = $1),
       ` + cols + `
FROM ` + table + ` e
WHERE e.stream_id = $1 AND e.version >= $2 AND e.version <= $3` + markers + `
ORDER BY e.version ` + dir + `
LIMIT $4`
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

// stateOf is the state of the stream named by the SQL expression id: the
// state its last event closes it with.
func stateOf(id string) string {
	return `CASE (SELECT l.type FROM {events} l WHERE l.stream_id = ` + id + ` ORDER BY l.version DESC LIMIT 1)
    WHEN {tombstone} THEN 1 WHEN {archived} THEN 2 WHEN {shredded} THEN 3 ELSE 0 END`
}

// appendSQL is the append of one stream, in one statement, and inserts
// only: no row is updated, so appends stay as cheap as inserts even while a
// long transaction elsewhere on the server keeps PostgreSQL from pruning
// old row versions (a row updated on every append would grow a chain of
// versions that each update walks).
//
// The primary key (stream_id, version) decides between concurrent
// appenders. The statement reads the stream's last event as its snapshot
// sees it (base): the one at the expected version when exact, the last one
// otherwise. It inserts the first event after it with ON CONFLICT DO
// NOTHING, only if that event exists as expected, does not close the
// stream (a tombstone or a marker), and belongs to a transaction numbered
// at most this one (the global log orders by transaction, so a stream's
// appends must come in transaction order). If another appender took the
// version, whether it committed before the snapshot or commits while this
// statement waits for it, the insert does nothing, nor do the other events,
// which are inserted only after the first one: the statement returns no
// rows, raises nothing, and the caller's transaction stays usable. Once the
// first event is in, no one else can insert after it before this
// transaction ends, so the others cannot conflict. A stored event ID raises
// a unique violation, which the caller diagnoses.
//
// Any and Exists appends, which would succeed again when retried after
// their first attempt committed, first look the event IDs up, one index
// probe each (a scalar subquery, which the planner cannot turn into a hash
// of the whole table as it would an EXISTS or = ANY).
//
// Parameters: $1 stream, $2 expected version, $3 encrypted, then the event
// columns $4 ID, $5 type, $6 schema version, $7 data, $8 metadata (JSON
// text, ” for none), $9 time (NULL: now()): scalars for one event, arrays for
// several. Rows of several events come from generate_subscripts rather
// than unnest, whose row estimate follows the array's length and would make
// PostgreSQL plan every call anew.
func appendSQL(kind appendKind, many bool) string {
	// from and where select the stream's last event l as expected, or the
	// row a stream without events starts from.
	const usable = `l.type NOT IN ({builtin}) AND l.transaction_id <= pg_current_xact_id()`
	var base, from, where string
	switch kind {
	case kindExact:
		base, from = `$2::bigint`, `FROM {events} l`
		where = `l.stream_id = $1 AND l.version = $2::bigint AND ` + usable
	case kindNoStream:
		base = `0::bigint`
		where = `$2::bigint = 0 AND NOT EXISTS (SELECT 1 FROM {events} l WHERE l.stream_id = $1)`
	case kindExists, kindAny:
		base = `coalesce(l.version, 0)`
		from = `FROM (SELECT 1) x LEFT JOIN LATERAL (
        SELECT e.version, e.transaction_id, e.type FROM {events} e WHERE e.stream_id = $1 ORDER BY e.version DESC LIMIT 1
    ) l ON true`
		where = `$2::bigint = -2 AND l.version IS NOT NULL AND ` + usable
		if kind == kindAny {
			where = `$2::bigint = -1 AND (l.version IS NULL OR ` + usable + `)`
		}
		if many {
			where += `
      AND NOT EXISTS (SELECT 1 FROM generate_subscripts($4::text[], 1) AS u(i)
                      WHERE (SELECT 1 FROM {events} d WHERE d.event_id = ($4::text[])[u.i]) IS NOT NULL
                         OR (SELECT 1 FROM {archive} a WHERE a.event_id = ($4::text[])[u.i]) IS NOT NULL)`
		} else {
			where += `
      AND (SELECT 1 FROM {events} d WHERE d.event_id = $4::text) IS NULL
      AND (SELECT 1 FROM {archive} a WHERE a.event_id = $4::text) IS NULL`
		}
	}
	const cols = `INSERT INTO {events} (stream_id, version, event_id, type, schema_version, data, metadata, occurred_at, encrypted)`
	const returning = `RETURNING version, position, transaction_id`
	if !many {
		// One event: the insert is the statement (notifying wraps it).
		return `WITH ins AS (
    ` + cols + `
    SELECT $1, ` + base + ` + 1, $4::text, $5::text, $6::int, $7::bytea, NULLIF($8::text, '')::jsonb, coalesce($9::timestamptz, now()), $3::bool
    ` + from + `
    WHERE ` + where + `
    ON CONFLICT ON CONSTRAINT {events_pkey} DO NOTHING
    ` + returning + `
)
SELECT ins.version, ins.position, ins.transaction_id FROM ins`
	}
	return `WITH first AS (
    ` + cols + `
    SELECT $1, ` + base + ` + 1, ($4::text[])[1], ($5::text[])[1], ($6::int[])[1], ($7::bytea[])[1],
           NULLIF(($8::text[])[1], '')::jsonb, coalesce(($9::timestamptz[])[1], now()), $3::bool
    ` + from + `
    WHERE ` + where + `
    ON CONFLICT ON CONSTRAINT {events_pkey} DO NOTHING
    ` + returning + `
), rest AS (
    ` + cols + `
    SELECT $1, first.version - 1 + i, ($4::text[])[i], ($5::text[])[i], ($6::int[])[i], ($7::bytea[])[i],
           NULLIF(($8::text[])[i], '')::jsonb, coalesce(($9::timestamptz[])[i], now()), $3::bool
    FROM first, generate_subscripts($4::text[], 1) AS i
    WHERE i > 1
    ORDER BY i
    ` + returning + `
), ins AS (SELECT * FROM first UNION ALL SELECT * FROM rest)
SELECT max(ins.version), array_agg(ins.position ORDER BY ins.position), min(ins.transaction_id) FROM ins
HAVING count(*) > 0`
}

// The markers of archiving and shredding, left out of stream reads.
const (
	markerArchived = eventsource.TypeStreamArchived
	markerShredded = eventsource.TypeStreamShredded
)

// unwrapInsert turns "WITH ins AS (INSERT ...) SELECT ... FROM ins" into
// the bare INSERT ... RETURNING, which PostgreSQL runs without the common
// table expression's materialization.
func unwrapInsert(q string) string {
	q = strings.TrimPrefix(q, "WITH ins AS (\n    ")
	return q[:strings.LastIndex(q, "\n)\nSELECT ins.")]
}
