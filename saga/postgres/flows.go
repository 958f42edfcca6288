package postgres

import (
	"cmp"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/saga"
)

//go:embed flow.sql
var flowTemplate string

// DefaultFlowTable is the flows table when FlowsConfig.Table is empty; the
// events table is its name followed by "_event".
const DefaultFlowTable = "saga_flow"

// FlowsConfig configures Flows.
type FlowsConfig struct {
	// Table is the flows table, "name" or "schema.name"; the events table
	// is its sibling name + "_event". Default DefaultFlowTable.
	Table string
}

// Flows is the saga.FlowStore on PostgreSQL: a row per flow (correlation
// ID) with its summary, and a row per event, unique by message ID so that
// redeliveries are recorded once. Record writes a batch of events and
// their flows' summaries in one transaction.
type Flows struct {
	pool *pgxpool.Pool
	name pgtable.Name
	ddl  string

	insertSQL, upsertSQL, flowSQL, eventsSQL, stuckSQL, listSQL string
}

var _ saga.FlowStore = (*Flows)(nil)

const flowSuffix = len("_event_flow")

// NewFlows returns a flow store on pool. Call Migrate (or apply
// FlowSchema) first.
func NewFlows(pool *pgxpool.Pool, cfg FlowsConfig) (*Flows, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	n, err := pgtable.Parse(pkg, cfg.Table, DefaultFlowTable, flowSuffix)
	if err != nil {
		return nil, err
	}
	r := strings.NewReplacer("{t}", n.Ident(), "{e}", n.Sibling("_event"))
	s := func(q string) string { return r.Replace(q) }
	const sumCols = `correlation_id, flow, started_at, last_at, last_type, last_source, events, done, ended_at, due_at`
	return &Flows{pool: pool, name: n, ddl: renderFlowSchema(n),
		insertSQL: s(`INSERT INTO {e} (message_id, correlation_id, causation_id, flow, type, source, topic, at, terminal)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::timestamptz[], $9::boolean[])
ORDER BY 1
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id`),
		// One row per flow of the batch, aggregated by the caller from the
		// events actually inserted; merged into the existing summary.
		upsertSQL: s(`INSERT INTO {t} AS f (correlation_id, flow, started_at, last_at, last_type, last_source, events, done,
                     ended_at, deadline_us, due_at)
SELECT c, fl, s, l, lt, ls, n, d, e, dl, CASE WHEN dl > 0 THEN s + dl * interval '1 microsecond' END
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::text[], $6::text[], $7::integer[],
            $8::boolean[], $9::timestamptz[], $10::bigint[]) AS u(c, fl, s, l, lt, ls, n, d, e, dl)
ORDER BY c
ON CONFLICT (correlation_id) DO UPDATE SET
    started_at  = least(f.started_at, EXCLUDED.started_at),
    due_at      = CASE WHEN f.deadline_us > 0
                       THEN least(f.started_at, EXCLUDED.started_at) + f.deadline_us * interval '1 microsecond' END,
    last_at     = greatest(f.last_at, EXCLUDED.last_at),
    last_type   = CASE WHEN EXCLUDED.last_at >= f.last_at THEN EXCLUDED.last_type ELSE f.last_type END,
    last_source = CASE WHEN EXCLUDED.last_at >= f.last_at THEN EXCLUDED.last_source ELSE f.last_source END,
    events      = f.events + EXCLUDED.events,
    done        = f.done OR EXCLUDED.done,
    ended_at    = CASE WHEN f.done THEN f.ended_at ELSE EXCLUDED.ended_at END`),
		flowSQL: s(`SELECT ` + sumCols + ` FROM {t} WHERE correlation_id = $1`),
		eventsSQL: s(`SELECT message_id, correlation_id, causation_id, flow, type, source, topic, at, terminal, seq
FROM {e} WHERE correlation_id = $1 ORDER BY at, seq`),
		stuckSQL: s(`SELECT ` + sumCols + ` FROM {t} WHERE NOT done AND due_at < $1 ORDER BY due_at, correlation_id LIMIT $2`),
		listSQL: s(`SELECT ` + sumCols + ` FROM {t}
WHERE correlation_id > $1 AND ($2::text = '' OR flow = $2) AND ($3::boolean IS NULL OR done = $3)
ORDER BY correlation_id LIMIT $4`),
	}, nil
}

func renderFlowSchema(n pgtable.Name) string {
	return strings.NewReplacer("{t}", n.Ident(), "{e}", n.Sibling("_event"), "{due_index}", n.Derived("_due"),
		"{flow_index}", n.Derived("_event_flow")).Replace(flowTemplate)
}

// FlowSchema returns the DDL of the flow tracker's tables ("":
// DefaultFlowTable).
func FlowSchema(table string) (string, error) {
	n, err := pgtable.Parse(pkg, table, DefaultFlowTable, flowSuffix)
	if err != nil {
		return "", err
	}
	return renderFlowSchema(n), nil
}

// MigrateFlows creates the flow tracker's tables if missing (idempotent,
// serialized by an advisory lock).
func MigrateFlows(ctx context.Context, db DB, table string) error {
	n, err := pgtable.Parse(pkg, table, DefaultFlowTable, flowSuffix)
	if err != nil {
		return err
	}
	return migrate(ctx, db, n, "steadfast.saga.flow", renderFlowSchema(n))
}

// Migrate creates the store's tables if missing.
func (f *Flows) Migrate(ctx context.Context) error {
	return migrate(ctx, f.pool, f.name, "steadfast.saga.flow", f.ddl)
}

// Schema returns the store's DDL.
func (f *Flows) Schema() string { return f.ddl }

// Record implements saga.FlowStore.
func (f *Flows) Record(ctx context.Context, evs []saga.FlowEvent) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	n := len(evs)
	ids, corrs, causes, flows := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	types, sources, topics := make([]string, n), make([]string, n), make([]string, n)
	ats, terms := make([]time.Time, n), make([]bool, n)
	byID := make(map[string]saga.FlowEvent, n)
	for i, ev := range evs {
		ids[i], corrs[i], causes[i], flows[i] = ev.MessageID, ev.CorrelationID, ev.CausationID, ev.Flow
		types[i], sources[i], topics[i], ats[i], terms[i] = ev.Type, ev.Source, ev.Topic, ev.At, ev.Terminal
		byID[ev.MessageID] = ev
	}
	stored := 0
	err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, f.insertSQL, ids, corrs, causes, flows, types, sources, topics, ats, terms)
		if err != nil {
			return err
		}
		inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		stored = len(inserted)
		if stored == 0 {
			return nil
		}
		// Summaries of the inserted events, per flow.
		sums := map[string]*saga.FlowSummary{}
		deadlines := map[string]time.Duration{}
		for _, id := range inserted {
			ev := byID[id]
			s := sums[ev.CorrelationID]
			if s == nil {
				s = &saga.FlowSummary{CorrelationID: ev.CorrelationID, Flow: ev.Flow, StartedAt: ev.At, LastAt: ev.At,
					LastType: ev.Type, LastSource: ev.Source}
				sums[ev.CorrelationID] = s
				deadlines[ev.CorrelationID] = ev.Deadline
			}
			s.Events++
			if ev.At.Before(s.StartedAt) {
				s.StartedAt = ev.At
			}
			if !ev.At.Before(s.LastAt) {
				s.LastAt, s.LastType, s.LastSource = ev.At, ev.Type, ev.Source
			}
			if ev.Terminal && (!s.Done || ev.At.Before(s.EndedAt)) {
				s.Done, s.EndedAt = true, ev.At
			}
		}
		m := len(sums)
		c, fl, st, la, lt, ls := make([]string, 0, m), make([]string, 0, m), make([]time.Time, 0, m), make([]time.Time, 0, m), make([]string, 0, m), make([]string, 0, m)
		cnt, done, ended, dl := make([]int32, 0, m), make([]bool, 0, m), make([]*time.Time, 0, m), make([]int64, 0, m)
		keys := make([]string, 0, m)
		for k := range sums {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			s := sums[k]
			c, fl, st, la, lt, ls = append(c, k), append(fl, s.Flow), append(st, s.StartedAt), append(la, s.LastAt), append(lt, s.LastType), append(ls, s.LastSource)
			cnt, done, dl = append(cnt, int32(s.Events)), append(done, s.Done), append(dl, deadlines[k].Microseconds())
			if s.Done {
				e := s.EndedAt
				ended = append(ended, &e)
			} else {
				ended = append(ended, nil)
			}
		}
		_, err = tx.Exec(ctx, f.upsertSQL, c, fl, st, la, lt, ls, cnt, done, ended, dl)
		return err
	})
	if err != nil {
		return 0, conflict("record flow events", err)
	}
	return stored, nil
}

func scanSummary(row pgx.Row) (saga.FlowSummary, error) {
	var s saga.FlowSummary
	var ended, due *time.Time
	var n int32
	if err := row.Scan(&s.CorrelationID, &s.Flow, &s.StartedAt, &s.LastAt, &s.LastType, &s.LastSource, &n, &s.Done, &ended, &due); err != nil {
		return s, err
	}
	s.Events = int(n)
	if ended != nil {
		s.EndedAt = *ended
	}
	if due != nil {
		s.DueAt = *due
	}
	return s, nil
}

// Flow implements saga.FlowStore.
func (f *Flows) Flow(ctx context.Context, correlationID string) (saga.FlowSummary, []saga.FlowEvent, error) {
	s, err := scanSummary(f.pool.QueryRow(ctx, f.flowSQL, correlationID))
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil, fmt.Errorf("%s: flow %s: %w", pkg, correlationID, saga.ErrNotFound)
	}
	if err != nil {
		return s, nil, fmt.Errorf("%s: flow %s: %w", pkg, correlationID, err)
	}
	rows, err := f.pool.Query(ctx, f.eventsSQL, correlationID)
	if err != nil {
		return s, nil, fmt.Errorf("%s: flow %s: %w", pkg, correlationID, err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (saga.FlowEvent, error) {
		var ev saga.FlowEvent
		err := r.Scan(&ev.MessageID, &ev.CorrelationID, &ev.CausationID, &ev.Flow, &ev.Type, &ev.Source, &ev.Topic,
			&ev.At, &ev.Terminal, &ev.Seq)
		return ev, err
	})
	if err != nil {
		return s, nil, fmt.Errorf("%s: flow %s: %w", pkg, correlationID, err)
	}
	slices.SortStableFunc(evs, func(a, b saga.FlowEvent) int { return cmp.Or(a.At.Compare(b.At), cmp.Compare(a.Seq, b.Seq)) })
	return s, evs, nil
}

func (f *Flows) summaries(ctx context.Context, q string, args ...any) ([]saga.FlowSummary, error) {
	rows, err := f.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: flows: %w", pkg, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (saga.FlowSummary, error) { return scanSummary(r) })
	if err != nil {
		return nil, fmt.Errorf("%s: flows: %w", pkg, err)
	}
	return out, nil
}

// Stuck implements saga.FlowStore.
func (f *Flows) Stuck(ctx context.Context, now time.Time, limit int) ([]saga.FlowSummary, error) {
	if limit <= 0 {
		limit = 100
	}
	return f.summaries(ctx, f.stuckSQL, now, limit)
}

// Flows implements saga.FlowStore.
func (f *Flows) Flows(ctx context.Context, q saga.FlowQuery) ([]saga.FlowSummary, error) {
	if q.Limit <= 0 {
		q.Limit = 100
	}
	return f.summaries(ctx, f.listSQL, q.AfterID, q.Flow, q.Done, q.Limit)
}
