package postgres

import "strings"

// statements holds the SQL of one table, built once by New.
type statements struct {
	enqueue         string
	enqueueLocked   string
	claim           string
	blockedKeys     string
	markPublished   string
	deletePublished string
	fail            string
	stats           string
	cleanup         string
	parked          string
	redrive         string
	deleteDead      string
}

// enqueueSQL inserts the rows of Enqueue's six parameter arrays.
const enqueueSQL = `INSERT INTO {t} (message_id, topic, key, payload, headers, message_time)
SELECT m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb, m.time
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::timestamptz[])
     WITH ORDINALITY AS m(id, topic, key, payload, headers, time, ord)`

// enqueueSQL returns the insert Enqueue runs: with every key locked first
// when locked, and sending a notification on the channel in parameter $7
// when notify.
func (st statements) enqueueSQL(locked, notify bool) string {
	q := st.enqueue
	if locked {
		q = st.enqueueLocked
	}
	if notify {
		q = `WITH ins AS (` + q + ` RETURNING 1) SELECT pg_notify($7, '') WHERE EXISTS (SELECT 1 FROM ins)`
	}
	return q
}

const recordColumns = `o.id, o.message_id, o.topic, o.key, o.payload, o.headers, o.message_time, o.enqueued_at, o.attempts, o.last_error`

// buildStatements renders the SQL for table (quoted) and its literal
// (pgtable.Name.Literal). Advisory locks are scoped to the database; their
// class is the table's OID, so outboxes of the same name in different
// schemas never share locks.
func buildStatements(table, literal string) statements {
	ns := literal + "::regclass::oid::int4"
	r := strings.NewReplacer("{t}", table, "{cols}", recordColumns, "{ns}", ns)
	s := func(q string) string { return r.Replace(q) }
	return statements{
		// Rows get their ids in argument order. headers '' means NULL.
		enqueue: s(enqueueSQL + `
ORDER BY m.ord`),

		// The same, after locking every distinct non-empty key in a fixed
		// order (so two Enqueue calls cannot deadlock on each other). The
		// uncorrelated subquery is an InitPlan: it runs, and takes every lock,
		// before the first row is inserted and draws its id.
		enqueueLocked: s(enqueueSQL + `
WHERE (SELECT count(*) FROM (
         SELECT pg_advisory_xact_lock(({ns}) # 1600085855, hashtext(k.key))
         FROM (SELECT DISTINCT u.key FROM unnest($3::text[]) AS u(key) WHERE u.key <> '' ORDER BY u.key) k
      ) l) >= 0
ORDER BY m.ord`),

		// The claim, in one statement. The window is the first $2 due
		// pending rows in id order, skipping blocked keys (a row waiting for
		// a retry, or a parked row when $3). Its keys are taken in order of
		// their oldest row, each with a transaction-scoped try-lock (a key
		// locked by another relay is in flight there and is skipped), until
		// the locked keys hold $1 rows of the window; rows without a key take
		// no lock. The window rows of the locked keys, at most $1 in id
		// order, are then locked FOR UPDATE SKIP LOCKED; their status and
		// retry time are checked again on the latest row versions, so rows
		// that the previous holder of a key published, deleted or failed
		// after this statement's snapshot are skipped. The uncorrelated
		// ARRAY() subquery is an InitPlan: every key lock is taken before
		// the first row is locked.
		claim: s(`WITH RECURSIVE blocked AS (
    SELECT b.key FROM {t} b
    WHERE b.status = 'pending' AND b.attempts > 0 AND b.available_at > now() AND b.key <> ''
    UNION
    SELECT b.key FROM {t} b
    WHERE $3::bool AND b.status = 'dead' AND b.key <> ''
), win AS MATERIALIZED (
    SELECT o.id, o.key FROM {t} o
    WHERE o.status = 'pending' AND o.available_at <= now()
      AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.key = o.key)
    ORDER BY o.id
    LIMIT $2
), cand AS (
    SELECT array_agg(g.key ORDER BY g.head) AS keys, array_agg(g.n ORDER BY g.head) AS ns
    FROM (SELECT w.key, min(w.id) AS head, count(*) AS n FROM win w GROUP BY w.key) g
), walk(i, total, ok) AS (
    SELECT 0, 0::bigint, false
    UNION ALL
    SELECT w.i + 1, w.total + CASE WHEN l.ok THEN c.ns[w.i + 1] ELSE 0 END, l.ok
    FROM walk w
    CROSS JOIN cand c
    CROSS JOIN LATERAL (
        SELECT c.keys[w.i + 1] = '' OR pg_try_advisory_xact_lock({ns}, hashtext(c.keys[w.i + 1])) AS ok
    ) l
    WHERE w.i < coalesce(cardinality(c.keys), 0) AND w.total < $1
), locked AS (
    SELECT c.keys[w.i] AS key FROM walk w CROSS JOIN cand c WHERE w.ok
), remember AS (
    -- For the blockedKeys statement that follows in the same transaction.
    SELECT set_config('steadfast.outbox_claim_keys', coalesce(array_agg(key)::text, '{}'), true) AS v
    FROM locked
)
SELECT {cols}
FROM {t} o
WHERE o.id = ANY (ARRAY(
        SELECT win.id FROM win WHERE win.key IN (SELECT key FROM locked) ORDER BY win.id LIMIT $1))
  AND o.status = 'pending' AND o.available_at <= now()
  AND (SELECT v FROM remember) IS NOT NULL
FOR UPDATE OF o SKIP LOCKED`),

		// The claim's second statement, whose snapshot postdates the key
		// locks: the locked keys (remembered by the claim statement) that
		// the previous holder left blocked (a failed or parked head) since
		// the claim's snapshot. Their rows are dropped.
		blockedKeys: s(`SELECT DISTINCT b.key FROM {t} b
WHERE b.key = ANY(current_setting('steadfast.outbox_claim_keys')::text[]) AND b.key <> ''
  AND ((b.status = 'pending' AND b.attempts > 0 AND b.available_at > now())
       OR ($1::bool AND b.status = 'dead'))`),

		markPublished: s(`UPDATE {t} SET status = 'published', published_at = now() WHERE id = ANY($1::bigint[])`),

		deletePublished: s(`DELETE FROM {t} WHERE id = ANY($1::bigint[])`),

		fail: s(`UPDATE {t} AS o SET
    attempts = o.attempts + 1,
    last_error = f.reason,
    status = CASE WHEN f.park THEN 'dead' ELSE 'pending' END,
    parked_at = CASE WHEN f.park THEN now() END,
    available_at = CASE WHEN f.park THEN o.available_at ELSE now() + f.delay_us * interval '1 microsecond' END
FROM unnest($1::bigint[], $2::text[], $3::bool[], $4::bigint[]) AS f(id, reason, park, delay_us)
WHERE o.id = f.id`),

		stats: s(`SELECT
    (SELECT count(*) FROM {t} WHERE status = 'pending'),
    (SELECT enqueued_at FROM {t} WHERE status = 'pending' ORDER BY id LIMIT 1),
    (SELECT count(*) FROM {t} WHERE status = 'dead')`),

		cleanup: s(`DELETE FROM {t} WHERE id IN (
    SELECT id FROM {t} WHERE status = 'published' AND published_at < $1
    ORDER BY published_at LIMIT $2 FOR UPDATE SKIP LOCKED)`),

		parked: s(`SELECT {cols}, o.status, o.parked_at FROM {t} o
WHERE o.status = 'dead' AND o.id > $1 ORDER BY o.id LIMIT $2`),

		redrive: s(`WITH r AS (
    UPDATE {t} SET status = 'pending', attempts = 0, available_at = '-infinity', parked_at = NULL
    WHERE id = ANY($1::bigint[]) AND status = 'dead'
    RETURNING 1
), n AS (
    SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM r)
)
SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM n)`),

		deleteDead: s(`DELETE FROM {t} WHERE id = ANY($1::bigint[]) AND status = 'dead'`),
	}
}
