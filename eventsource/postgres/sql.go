package postgres

import "strings"

// statements holds the SQL of one store, built once by New.
type statements struct {
	appendOne       string // single stream, $1..$10
	appendOneNotify string // the same, notifying on $11
	appendMany      string // several streams, $1..$13
	appendManyNtfy  string
	diagStreams     string
	diagEvents      string
	readStream      string
	readBackward    string
	asOfTime        string
	readLog         string
	blocker         string
	prepared        string
	getKeys         string
	saveSnapshot    string
	loadSnapshot    string
	truncate        string
	archive         string
	shred           string
	streamKey       string
	streamState     string
}

// streamStates: 0 open, 1 deleted, 2 archived, 3 shredded.
const (
	stateOpen     = 0
	stateDeleted  = 1
	stateArchived = 2
	stateShredded = 3
)

// notifySuffix turns an append statement ending in "SELECT ... FROM ins"
// into one that also sends a notification on $n when it inserted rows. The
// uncorrelated subquery is an InitPlan: it runs once, before the first row
// is returned, after ins has run.
func notifying(q, param string) string {
	return strings.Replace(q, "\nSELECT ins.", "\n, n AS (SELECT pg_notify("+param+", '') FROM (SELECT 1 FROM ins LIMIT 1) x)\nSELECT ins.", 1) +
		"\nWHERE (SELECT count(*) FROM n) >= 0"
}

func buildStatements(t tables) statements {
	r := strings.NewReplacer("{events}", t.events, "{streams}", t.streams, "{snapshots}", t.snapshots,
		"{keys}", t.keys, "{archive}", t.archive, "{seq}", t.name.Sibling("_seq"),
		"{seq_literal}", "'"+strings.ReplaceAll(t.seq, "'", "''")+"'")
	s := func(q string) string { return r.Replace(q) }
	st := statements{
		// The append of one stream, in one statement. The stream's row is
		// inserted (new stream) or updated under its row lock, and only if
		// the stream matches the expectation ($2: -1 any, -2 exists, 0 no
		// stream, n exact), is open, has no events of a transaction numbered
		// after this one, and none of the event IDs is stored yet. In READ
		// COMMITTED, ON CONFLICT DO UPDATE checks its WHERE against the
		// latest committed row after waiting for the lock, so a concurrent
		// appender makes this one find the conflict, not overwrite it. The
		// events are inserted only when the row was written, numbered from
		// the stream's previous version. Nothing raises an error: a conflict
		// returns no rows and leaves the caller's transaction usable.
		appendOne: s(`WITH up AS (
    INSERT INTO {streams} AS s (stream_id, version, last_xid, state)
    SELECT $1, cardinality($3::text[]), pg_current_xact_id(), $10::smallint
    WHERE ($2::bigint IN (-1, 0) OR EXISTS (SELECT 1 FROM {streams} x WHERE x.stream_id = $1))
      AND NOT EXISTS (SELECT 1 FROM {events} e WHERE e.event_id = ANY ($3::text[]))
      AND NOT EXISTS (SELECT 1 FROM {archive} a WHERE a.event_id = ANY ($3::text[]))
    ON CONFLICT (stream_id) DO UPDATE
        SET version = s.version + excluded.version, last_xid = excluded.last_xid, state = excluded.state
        WHERE s.state = 0 AND s.last_xid <= excluded.last_xid AND ($2::bigint < 0 OR s.version = $2::bigint)
    RETURNING s.version
), ins AS (
    INSERT INTO {events} (stream_id, version, event_id, type, schema_version, data, metadata, occurred_at, encrypted)
    SELECT $1, up.version - cardinality($3::text[]) + e.ord, e.id, e.type, e.sv, e.data, e.md::jsonb,
           coalesce(e.at, now()), $9::bool
    FROM up, unnest($3::text[], $4::text[], $5::int[], $6::bytea[], $7::text[], $8::timestamptz[])
         WITH ORDINALITY AS e(id, type, sv, data, md, at, ord)
    ORDER BY e.ord
    RETURNING version, position, transaction_id
)
SELECT ins.version, ins.position, ins.transaction_id FROM ins`),

		// The same for several streams: $1 stream IDs, $2 expectations, $3
		// event counts, $4 states; per event $5 its stream's index (1-based)
		// and $6 its rank in that stream, then the event columns. Rows are
		// locked in stream ID order. A stream whose expectation fails gets no
		// row while the others may: the caller runs it in a savepoint and
		// rolls back when fewer streams came back.
		appendMany: s(`WITH st AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::smallint[])
        WITH ORDINALITY AS st(stream_id, expected, n, state, idx)
), up AS (
    INSERT INTO {streams} AS s (stream_id, version, last_xid, state)
    SELECT st.stream_id, st.n, pg_current_xact_id(), st.state FROM st
    WHERE (st.expected IN (-1, 0) OR EXISTS (SELECT 1 FROM {streams} x WHERE x.stream_id = st.stream_id))
      AND NOT EXISTS (SELECT 1 FROM {events} e WHERE e.event_id = ANY ($7::text[]))
      AND NOT EXISTS (SELECT 1 FROM {archive} a WHERE a.event_id = ANY ($7::text[]))
    ORDER BY st.stream_id
    ON CONFLICT (stream_id) DO UPDATE
        SET version = s.version + excluded.version, last_xid = excluded.last_xid, state = excluded.state
        WHERE s.state = 0 AND s.last_xid <= excluded.last_xid
          AND (SELECT st2.expected < 0 OR st2.expected = s.version FROM st st2 WHERE st2.stream_id = s.stream_id)
    RETURNING s.stream_id, s.version
), ins AS (
    INSERT INTO {events} (stream_id, version, event_id, type, schema_version, data, metadata, occurred_at, encrypted)
    SELECT st.stream_id, up.version - st.n + e.rank, e.id, e.type, e.sv, e.data, e.md::jsonb, coalesce(e.at, now()), e.enc
    FROM unnest($5::int[], $6::int[], $7::text[], $8::text[], $9::int[], $10::bytea[], $11::text[], $12::timestamptz[], $13::bool[])
         WITH ORDINALITY AS e(sidx, rank, id, type, sv, data, md, at, enc, ord)
    JOIN st ON st.idx = e.sidx
    JOIN up ON up.stream_id = st.stream_id
    ORDER BY e.ord
    RETURNING stream_id, version, position, transaction_id
)
SELECT ins.stream_id, ins.version, ins.position, ins.transaction_id FROM ins`),

		// Why an append stored nothing: the streams as they are now, and
		// whether a transaction numbered after this one appended last.
		diagStreams: s(`SELECT x.stream_id, coalesce(s.version, 0), coalesce(s.state, 0),
       coalesce(s.last_xid > pg_current_xact_id_if_assigned(), false)
FROM unnest($1::text[]) AS x(stream_id)
LEFT JOIN {streams} s ON s.stream_id = x.stream_id`),

		// The stored events of an append's IDs (a retry of a committed one?).
		diagEvents: s(`SELECT event_id, stream_id, version, position, transaction_id FROM {events} WHERE event_id = ANY ($1::text[])
UNION ALL
SELECT event_id, stream_id, version, position, transaction_id FROM {archive} WHERE event_id = ANY ($1::text[])`),

		// A stream read: the events between versions $2 and $3, at most $4
		// (NULL: all), with the stream's state and key; from the archive
		// when archived. $5 leaves the metadata out. No rows: the caller
		// reads the stream's state (streamState).
		readStream: s(streamReadSQL("ASC")),
		readBackward: s(streamReadSQL("DESC")),

		asOfTime: s(`SELECT coalesce(max(v), 0) FROM (
    SELECT version FROM {events} WHERE stream_id = $1 AND occurred_at <= $2
    UNION ALL
    SELECT version FROM {archive} WHERE stream_id = $1 AND occurred_at <= $2
) x(v)`),

		// A page of the global log. The fence is the xmin of this
		// statement's snapshot: every transaction below it has ended, so the
		// events below it are all visible now and no event can appear below
		// it later. Events at or past it wait, even committed ones (held).
		// future: events stamped with transaction IDs the server has not
		// assigned yet (the events table came from another cluster).
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

		// The session running the fence's transaction.
		blocker: `SELECT pid, xact_start, coalesce(state, ''), coalesce(application_name, ''), coalesce(left(query, 200), '')
FROM pg_stat_activity WHERE backend_xid = $1::xid8::xid LIMIT 1`,
		prepared: `SELECT gid, prepared FROM pg_prepared_xacts WHERE transaction = $1::xid8::xid LIMIT 1`,

		// Get or create the data keys of streams ($1) with fresh wrapped
		// keys ($2). A key created by a transaction that commits while this
		// statement waits is not in its snapshot: the caller reads again.
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
		streamState: s(`SELECT state, version FROM {streams} WHERE stream_id = $1`),

		saveSnapshot: s(`INSERT INTO {snapshots} AS s (stream_id, version, event_id, schema_version, data, encrypted, taken_at)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE EXISTS (SELECT 1 FROM {streams} x WHERE x.stream_id = $1 AND x.state IN (0, 2))
ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, event_id = excluded.event_id,
    schema_version = excluded.schema_version, data = excluded.data, encrypted = excluded.encrypted, taken_at = excluded.taken_at`),
		loadSnapshot: s(`SELECT s.version, s.event_id, s.schema_version, s.data, s.encrypted, s.taken_at, k.key
FROM {snapshots} s LEFT JOIN {keys} k ON k.stream_id = s.stream_id
WHERE s.stream_id = $1`),

		truncate: s(`WITH s AS (SELECT 1 FROM {streams} WHERE stream_id = $1 AND version > 0),
d AS (DELETE FROM {events} WHERE stream_id = $1 AND version < $2 RETURNING 1),
a AS (DELETE FROM {archive} WHERE stream_id = $1 AND version < $2 RETURNING 1)
SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM d) + (SELECT count(*) FROM a)`),

		// Archive: lock the stream's row (waiting for an appender), then
		// move its events.
		archive: s(`WITH s AS (
    UPDATE {streams} SET state = 2 WHERE stream_id = $1 AND state IN (0, 2) AND version > 0 RETURNING 1
), moved AS (
    DELETE FROM {events} e WHERE e.stream_id = $1 AND EXISTS (SELECT 1 FROM s)
    RETURNING e.position, e.transaction_id, e.stream_id, e.version, e.event_id, e.type, e.schema_version,
              e.data, e.metadata, e.occurred_at, e.encrypted
), ins AS (
    INSERT INTO {archive} SELECT * FROM moved RETURNING 1
)
SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM ins),
       (SELECT state FROM {streams} WHERE stream_id = $1)`),

		// Shred: mark the stream (creating its row if needed, so it cannot be
		// created later), delete its key and snapshot, and erase payloads
		// that were stored in plain text.
		shred: s(`WITH s AS (
    INSERT INTO {streams} AS s (stream_id, version, last_xid, state) VALUES ($1, 0, pg_current_xact_id(), 3)
    ON CONFLICT (stream_id) DO UPDATE SET state = 3
    RETURNING 1
), k AS (
    INSERT INTO {keys} AS k (stream_id, key, shredded_at) VALUES ($1, NULL, now())
    ON CONFLICT (stream_id) DO UPDATE SET key = NULL, shredded_at = coalesce(k.shredded_at, now())
    RETURNING 1
), snap AS (
    DELETE FROM {snapshots} WHERE stream_id = $1 RETURNING 1
), e AS (
    UPDATE {events} SET data = NULL, encrypted = true WHERE stream_id = $1 AND (NOT encrypted OR data IS NOT NULL) RETURNING 1
), a AS (
    UPDATE {archive} SET data = NULL, encrypted = true WHERE stream_id = $1 AND (NOT encrypted OR data IS NOT NULL) RETURNING 1
)
SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM k) + (SELECT count(*) FROM snap) + (SELECT count(*) FROM e) + (SELECT count(*) FROM a)`),
	}
	st.appendOneNotify = notifying(st.appendOne, "$11")
	st.appendManyNtfy = notifying(st.appendMany, "$14")
	return st
}

const eventColumns = `e.version, e.position, e.transaction_id, e.event_id, e.type, e.schema_version, e.data,
           CASE WHEN $5::bool THEN NULL ELSE e.metadata END, e.occurred_at, e.encrypted`

func streamReadSQL(dir string) string {
	return `SELECT s.state, k.key, e.*
FROM {streams} s
LEFT JOIN {keys} k ON k.stream_id = s.stream_id
JOIN LATERAL (
    SELECT * FROM (
        (SELECT ` + eventColumns + ` FROM {events} e
         WHERE s.state <> 2 AND e.stream_id = s.stream_id AND e.version >= $2 AND e.version <= $3)
        UNION ALL
        (SELECT ` + eventColumns + ` FROM {archive} e
         WHERE s.state = 2 AND e.stream_id = s.stream_id AND e.version >= $2 AND e.version <= $3)
    ) e ORDER BY e.version ` + dir + ` LIMIT $4
) e ON true
WHERE s.stream_id = $1`
}
