package postgres

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/pgtable"
	"github.com/steadfast-go/steadfast/saga"
)

//go:embed participant.sql
var participantTemplate string

// DefaultParticipantTable is the participant records table when
// ParticipantsConfig.Table is empty.
const DefaultParticipantTable = "saga_participant"

// ParticipantsConfig configures Participants.
type ParticipantsConfig struct {
	// Table holds the participant records, "name" or "schema.name".
	// Default DefaultParticipantTable.
	Table string
	// Outbox receives the replies, in the participant's transaction.
	// Required.
	Outbox Outbox
	// TxOptions are the options of the transactions Handle begins.
	// Default: the server's (READ COMMITTED unless configured otherwise).
	TxOptions pgx.TxOptions
}

// Participants is the saga.ParticipantStore on PostgreSQL, in the
// participant's own database: the action (written through TxOf(tx)), the
// record that makes it exactly-once and the reply (through the outbox)
// commit in one transaction. Give it to saga.NewParticipant.
//
// Handle locks the step's record with SELECT ... FOR UPDATE, so duplicates
// of one command handled at once run one after the other, the second
// finding the first's record. When there is no record yet, two transactions
// may both find none; the one that inserts second fails on the primary key
// and Handle runs again in a fresh transaction, where it finds the record.
type Participants struct {
	pool *pgxpool.Pool
	out  Outbox
	name pgtable.Name
	cfg  ParticipantsConfig
	ddl  string

	selectSQL, insertSQL, updateSQL, cleanupSQL string
}

var _ saga.ParticipantStore = (*Participants)(nil)

// NewParticipants returns a participant store on pool. Call Migrate (or
// apply ParticipantSchema) first.
func NewParticipants(pool *pgxpool.Pool, cfg ParticipantsConfig) (*Participants, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidConfig)
	}
	if cfg.Outbox == nil {
		return nil, fmt.Errorf("%w: nil Outbox", ErrInvalidConfig)
	}
	n, err := pgtable.Parse(pkg, cfg.Table, DefaultParticipantTable, len("_state_check"))
	if err != nil {
		return nil, err
	}
	t := n.Ident()
	return &Participants{pool: pool, out: cfg.Outbox, name: n, cfg: cfg, ddl: renderParticipantSchema(n),
		selectSQL: `SELECT state, command, payload, reason, updated_at FROM ` + t +
			` WHERE participant = $1 AND saga_id = $2 AND step = $3 FOR UPDATE`,
		insertSQL: `INSERT INTO ` + t + ` (participant, saga_id, step, state, command, payload, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		updateSQL: `UPDATE ` + t + ` SET state = $4, command = $5, payload = $6, reason = $7, updated_at = now()
WHERE participant = $1 AND saga_id = $2 AND step = $3`,
		cleanupSQL: `DELETE FROM ` + t + ` WHERE ctid = ANY (ARRAY(SELECT ctid FROM ` + t +
			` WHERE updated_at < $1 LIMIT $2))`,
	}, nil
}

func renderParticipantSchema(n pgtable.Name) string {
	return strings.NewReplacer("{t}", n.Ident(), "{state_check}", n.Derived("_state_check"),
		"{updated_index}", n.Derived("_updated")).Replace(participantTemplate)
}

// ParticipantSchema returns the DDL of a participant records table ("":
// DefaultParticipantTable).
func ParticipantSchema(table string) (string, error) {
	n, err := pgtable.Parse(pkg, table, DefaultParticipantTable, len("_state_check"))
	if err != nil {
		return "", err
	}
	return renderParticipantSchema(n), nil
}

// MigrateParticipants creates a participant records table if missing
// (idempotent, serialized by an advisory lock).
func MigrateParticipants(ctx context.Context, db DB, table string) error {
	n, err := pgtable.Parse(pkg, table, DefaultParticipantTable, len("_state_check"))
	if err != nil {
		return err
	}
	return migrate(ctx, db, n, "steadfast.saga.participant", renderParticipantSchema(n))
}

// Migrate creates the store's table if missing.
func (p *Participants) Migrate(ctx context.Context) error {
	return migrate(ctx, p.pool, p.name, "steadfast.saga.participant", p.ddl)
}

// Schema returns the store's DDL.
func (p *Participants) Schema() string { return p.ddl }

// Cleanup deletes up to limit records not updated since before and returns
// how many. Keep records longer than any command or reply can be
// redelivered or sent again (the engines' retention is a safe bound).
func (p *Participants) Cleanup(ctx context.Context, before time.Time, limit int) (int, error) {
	tag, err := p.pool.Exec(ctx, p.cleanupSQL, before, limit)
	if err != nil {
		return 0, fmt.Errorf("%s: participant cleanup: %w", pkg, err)
	}
	return int(tag.RowsAffected()), nil
}

// Record returns the committed record of key.
func (p *Participants) Record(ctx context.Context, key saga.ParticipantKey) (saga.ParticipantRecord, error) {
	var rec saga.ParticipantRecord
	err := pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		var err error
		rec, _, err = p.load(ctx, tx, key)
		return err
	})
	return rec, err
}

func (p *Participants) load(ctx context.Context, tx pgx.Tx, key saga.ParticipantKey) (saga.ParticipantRecord, bool, error) {
	var rec saga.ParticipantRecord
	var state string
	err := tx.QueryRow(ctx, p.selectSQL, key.Participant, key.SagaID, key.Step).
		Scan(&state, &rec.Command, &rec.Payload, &rec.Reason, &rec.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, fmt.Errorf("%s: participant record %s/%s/%s: %w", pkg, key.Participant, key.SagaID, key.Step, err)
	}
	rec.State = saga.ParticipantState(state)
	return rec, true, nil
}

// Handle implements saga.ParticipantStore.
func (p *Participants) Handle(ctx context.Context, key saga.ParticipantKey, fn func(ctx context.Context, tx saga.Tx, rec saga.ParticipantRecord) (*saga.ParticipantRecord, []broker.Message, error)) error {
	for {
		err := p.handle(ctx, key, fn)
		if errors.Is(err, saga.ErrConflict) && ctx.Err() == nil {
			continue
		}
		return err
	}
}

func (p *Participants) handle(ctx context.Context, key saga.ParticipantKey, fn func(ctx context.Context, tx saga.Tx, rec saga.ParticipantRecord) (*saga.ParticipantRecord, []broker.Message, error)) error {
	tx, err := p.pool.BeginTx(ctx, p.cfg.TxOptions)
	if err != nil {
		return fmt.Errorf("%s: participant: begin: %w", pkg, err)
	}
	ptx := &participantTx{tx: tx}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	rec, exists, err := p.load(ctx, tx, key)
	if err != nil {
		return err
	}
	next, msgs, err := fn(ctx, ptx, rec)
	if err != nil {
		return err
	}
	if next != nil {
		q := p.updateSQL
		if !exists {
			q = p.insertSQL
		}
		if _, err := tx.Exec(ctx, q, key.Participant, key.SagaID, key.Step, string(next.State), next.Command,
			next.Payload, next.Reason); err != nil {
			return conflict(fmt.Sprintf("participant record %s/%s/%s", key.Participant, key.SagaID, key.Step), err)
		}
	}
	if len(msgs) > 0 {
		if err := p.out.Enqueue(ctx, tx, msgs...); err != nil {
			return fmt.Errorf("%s: participant reply: %w", pkg, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return conflict("participant commit", err)
	}
	for _, f := range ptx.afters {
		f()
	}
	return nil
}

type participantTx struct {
	tx     pgx.Tx
	afters []func()
}

func (t *participantTx) pgxTx() pgx.Tx        { return t.tx }
func (t *participantTx) AfterCommit(f func()) { t.afters = append(t.afters, f) }
