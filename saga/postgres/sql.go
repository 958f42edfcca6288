package postgres

import (
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/saga"
)

// statements holds the SQL of one pair of tables, built once by New.
type statements struct {
	load, create, save, claimDue, nextWake, unfinished, counts string
	get, getForUpdate, history, list, cleanup                  string
}

// column is an instance column and how a saga.Instance fills it.
type column struct {
	name string
	cast string
	val  func(in *saga.Instance) any
	save bool // written by Save (the others are fixed at Create)
}

// nullTime maps the zero time to NULL.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

var columns = []column{
	{"id", "text", func(in *saga.Instance) any { return in.ID }, false},
	{"type", "text", func(in *saga.Instance) any { return in.Type }, false},
	{"version", "integer", func(in *saga.Instance) any { return int32(in.Version) }, false},
	{"status", "text", func(in *saga.Instance) any { return string(in.Status) }, true},
	{"step", "integer", func(in *saga.Instance) any { return int32(in.Step) }, true},
	{"step_name", "text", func(in *saga.Instance) any { return in.StepName }, true},
	{"attempt", "integer", func(in *saga.Instance) any { return int32(in.Attempt) }, true},
	{"awaiting", "text", func(in *saga.Instance) any { return in.Awaiting }, true},
	{"awaiting_since", "timestamptz", func(in *saga.Instance) any { return nullTime(in.AwaitingSince) }, true},
	{"timer", "text", func(in *saga.Instance) any { return string(in.Timer) }, true},
	{"timer_at", "timestamptz", func(in *saga.Instance) any { return nullTime(in.TimerAt) }, true},
	{"deadline", "timestamptz", func(in *saga.Instance) any { return nullTime(in.Deadline) }, true},
	{"wake_at", "timestamptz", func(in *saga.Instance) any { return nullTime(in.WakeAt) }, true},
	{"past_pivot", "boolean", func(in *saga.Instance) any { return in.PastPivot }, true},
	{"parked_from", "text", func(in *saga.Instance) any { return string(in.ParkedFrom) }, true},
	{"request", "text", func(in *saga.Instance) any { return string(in.Request) }, true},
	{"request_reason", "text", func(in *saga.Instance) any { return in.RequestReason }, true},
	{"failure", "text", func(in *saga.Instance) any { return in.Failure }, true},
	{"data", "json", func(in *saga.Instance) any { return string(in.Data) }, true},
	{"trace", "text", func(in *saga.Instance) any { return in.Trace }, false},
	{"seq", "bigint", func(in *saga.Instance) any { return in.Seq }, true},
	{"revision", "bigint", func(in *saga.Instance) any { return in.Revision }, false},
	{"created_at", "timestamptz", func(in *saga.Instance) any { return in.CreatedAt }, false},
	{"updated_at", "timestamptz", func(in *saga.Instance) any { return in.UpdatedAt }, true},
	{"ended_at", "timestamptz", func(in *saga.Instance) any { return nullTime(in.EndedAt) }, true},
}

const selectColumns = `id, type, version, status, step, step_name, attempt, awaiting, awaiting_since, timer, timer_at,
deadline, wake_at, past_pivot, parked_from, request, request_reason, failure, data, trace, seq, revision,
created_at, updated_at, ended_at`

// historyInsert appends the events in the eight arrays starting at
// parameter p, for the instance id the CTE named from returns.
func historyInsert(h string, from string, p int) string {
	return fmt.Sprintf(`INSERT INTO %s (instance_id, seq, at, kind, step, attempt, message_id, detail, duration_us)
    SELECT %[2]s.id, e.seq, e.at, e.kind, e.step, e.attempt, NULLIF(e.message_id, ''), e.detail, e.duration_us
    FROM %[2]s, unnest($%d::bigint[], $%d::timestamptz[], $%d::text[], $%d::text[], $%d::integer[], $%d::text[],
                    $%d::text[], $%d::bigint[]) AS e(seq, at, kind, step, attempt, message_id, detail, duration_us)`,
		h, from, p, p+1, p+2, p+3, p+4, p+5, p+6, p+7)
}

// writeArgs returns the parameters of the create and save statements: the
// instance's columns in order, then the history arrays.
func writeArgs(c saga.Change) []any {
	in := &c.Instance
	args := make([]any, 0, len(columns)+8)
	for _, col := range columns {
		args = append(args, col.val(in))
	}
	n := len(c.Events)
	seqs, ats, kinds, steps := make([]int64, n), make([]time.Time, n), make([]string, n), make([]string, n)
	attempts, msgs, details, durs := make([]int32, n), make([]string, n), make([]string, n), make([]int64, n)
	for i, ev := range c.Events {
		seqs[i], ats[i], kinds[i], steps[i] = ev.Seq, ev.At, string(ev.Kind), ev.Step
		attempts[i], msgs[i], details[i], durs[i] = int32(ev.Attempt), ev.MessageID, ev.Detail, ev.Duration.Microseconds()
	}
	return append(args, seqs, ats, kinds, steps, attempts, msgs, details, durs)
}

func buildStatements(n pgtable.Name, _ string) statements {
	t, h := n.Ident(), n.Sibling("_history")
	names := make([]string, len(columns))
	values := make([]string, len(columns))
	var sets []string
	revision := 0
	for i, c := range columns {
		names[i] = c.name
		values[i] = fmt.Sprintf("$%d::%s", i+1, c.cast)
		if c.save {
			sets = append(sets, fmt.Sprintf("%s = $%d::%s", c.name, i+1, c.cast))
		}
		if c.name == "revision" {
			revision = i + 1
		}
	}
	hp := len(columns) + 1
	r := strings.NewReplacer("{t}", t, "{h}", h, "{cols}", selectColumns)
	s := func(q string) string { return r.Replace(q) }
	return statements{
		load: s(`SELECT {cols}, EXISTS (SELECT 1 FROM {h} WHERE instance_id = $1 AND message_id = $2)
FROM {t} WHERE id = $1`),

		// Insert the instance unless its ID exists (a concurrent insert of
		// the same ID is waited for), and its history only if it was
		// inserted. Every parameter is used, so each has a type.
		create: fmt.Sprintf(`WITH ins AS (
    INSERT INTO %s (%s) VALUES (%s)
    ON CONFLICT (id) DO NOTHING RETURNING id
), ev AS (
    %s
)
SELECT count(*) FROM ins`, t, strings.Join(names, ", "), strings.Join(values, ", "), historyInsert(h, "ins", hp)),

		// Update the row only at the revision it was read at, and append
		// the history only if it was updated. The columns fixed at create
		// (type, version, trace, created_at) are compared rather than
		// written, which keeps every parameter typed and catches a
		// replaced row.
		save: fmt.Sprintf(`WITH up AS (
    UPDATE %s SET %s, revision = revision + 1
    WHERE id = $1 AND revision = $%d::bigint AND type = $2::text AND version = $3::integer
      AND trace = $20::text AND created_at = $23::timestamptz
    RETURNING id
), ev AS (
    %s
)
SELECT count(*) FROM up`, t, strings.Join(sets, ", "), revision, historyInsert(h, "up", hp)),

		claimDue: s(`SELECT {cols} FROM {t}
WHERE wake_at <= $3 AND (type, version) IN (SELECT k.t, k.v FROM unnest($1::text[], $2::integer[]) AS k(t, v))
ORDER BY wake_at LIMIT 1
FOR UPDATE SKIP LOCKED`),

		nextWake: s(`SELECT min(wake_at) FROM {t}
WHERE wake_at IS NOT NULL AND (type, version) IN (SELECT k.t, k.v FROM unnest($1::text[], $2::integer[]) AS k(t, v))`),

		unfinished: s(`SELECT type, version, count(*), min(id) FROM {t}
WHERE status IN ('running', 'compensating', 'parked') GROUP BY type, version ORDER BY type, version`),

		counts: s(`SELECT type, status, count(*) FROM {t}
WHERE status IN ('running', 'compensating', 'parked') GROUP BY type, status ORDER BY type, status`),

		get:          s(`SELECT {cols} FROM {t} WHERE id = $1`),
		getForUpdate: s(`SELECT {cols} FROM {t} WHERE id = $1 FOR UPDATE`),

		history: s(`SELECT seq, at, kind, step, attempt, message_id, detail, duration_us FROM {h}
WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`),

		list: s(`SELECT {cols} FROM {t}
WHERE id > $1 AND ($2::text = '' OR type = $2) AND (cardinality($3::text[]) = 0 OR status = ANY($3))
ORDER BY id LIMIT $4`),

		cleanup: s(`WITH d AS (
    DELETE FROM {t} WHERE id IN (
        SELECT id FROM {t} WHERE ended_at < $1 ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING id
), h AS (
    DELETE FROM {h} WHERE instance_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d`),
	}
}

// scanInstance reads the instance columns (and, with probe, the message
// probe of load).
func scanInstance(row pgx.Row, probe bool) (saga.Instance, bool, error) {
	var (
		in                                                saga.Instance
		status, timer, parkedFrom, request                string
		version, step, attempt                            int32
		awaitingSince, timerAt, deadline, wakeAt, endedAt *time.Time
		data                                              []byte
		seen                                              bool
	)
	dest := []any{&in.ID, &in.Type, &version, &status, &step, &in.StepName, &attempt, &in.Awaiting, &awaitingSince,
		&timer, &timerAt, &deadline, &wakeAt, &in.PastPivot, &parkedFrom, &request, &in.RequestReason, &in.Failure,
		&data, &in.Trace, &in.Seq, &in.Revision, &in.CreatedAt, &in.UpdatedAt, &endedAt}
	if probe {
		dest = append(dest, &seen)
	}
	if err := row.Scan(dest...); err != nil {
		return in, false, err
	}
	in.Version, in.Step, in.Attempt = int(version), int(step), int(attempt)
	in.Status, in.Timer, in.ParkedFrom, in.Request = saga.Status(status), saga.Timer(timer), saga.Status(parkedFrom), saga.RequestKind(request)
	in.Data = data
	deref := func(p *time.Time) time.Time {
		if p == nil {
			return time.Time{}
		}
		return *p
	}
	in.AwaitingSince, in.TimerAt, in.Deadline, in.WakeAt, in.EndedAt =
		deref(awaitingSince), deref(timerAt), deref(deadline), deref(wakeAt), deref(endedAt)
	return in, seen, nil
}
