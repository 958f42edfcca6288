package saga

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// ParticipantState is what a participant did for one step of one instance.
type ParticipantState string

// Participant record states.
const (
	// ParticipantNone: nothing yet (no record).
	ParticipantNone ParticipantState = ""
	// ParticipantDone: the action ran and committed.
	ParticipantDone ParticipantState = "done"
	// ParticipantRefused: the action refused (saga.Refuse); nothing was
	// done.
	ParticipantRefused ParticipantState = "refused"
	// ParticipantCompensated: the compensation ran, or arrived first (a
	// null compensation): the action must never run for this step.
	ParticipantCompensated ParticipantState = "compensated"
)

// ParticipantKey identifies a participant record: one participant, one
// instance, one step.
type ParticipantKey struct {
	Participant string
	SagaID      string
	Step        string
}

// ParticipantRecord is what a participant remembers of one step of one
// instance, so that duplicate, reordered and late commands have no second
// effect.
type ParticipantRecord struct {
	State ParticipantState
	// Command is the ID of the command whose action ran or refused.
	Command string
	// Payload is the success reply's payload, sent again for duplicates.
	Payload []byte
	// Reason is the refusal's reason.
	Reason    string
	UpdatedAt time.Time
}

// ParticipantStore is the storage port of participants: their records and
// the outbox their replies leave through. saga/postgres implements it in
// the participant's own database, so the action, its record and its reply
// commit in one transaction; saga/memory in process.
type ParticipantStore interface {
	// Handle runs fn in a transaction that holds key's record locked
	// (concurrent calls for one key run one after the other), with the
	// record as committed (State ParticipantNone when there is none). It
	// then stores the record fn returns (nil: unchanged), enqueues msgs
	// through the outbox, and commits. When fn returns an error, nothing
	// is written and Handle returns it.
	Handle(ctx context.Context, key ParticipantKey, fn func(ctx context.Context, tx Tx, rec ParticipantRecord) (*ParticipantRecord, []broker.Message, error)) error
}

// ParticipantFunc performs (or undoes) a step for a command, inside tx. Its
// result is the reply payload (nil is fine). Return Refuse(err) to say no:
// the transaction rolls back (nothing tx wrote is kept) and a second one
// records the refusal and sends the failure reply with err's text. Any
// other error is transient: the transaction rolls back and the delivery is
// redelivered by the broker.
type ParticipantFunc func(ctx context.Context, tx Tx, cmd Command) ([]byte, error)

// ParticipantConfig configures a Participant.
type ParticipantConfig struct {
	// Name scopes the participant's records (one name per participant
	// service and command topic). Required.
	Name string
	// Action performs a step. Required.
	Action ParticipantFunc
	// Compensation undoes a performed step. It is called only when the
	// action ran: a compensation arriving before the action (or after a
	// refusal) is answered as done without calling it, and the action will
	// not run afterwards. Nil means there is nothing to undo. A refusal
	// from it is answered as a failure, and the engine retries with its
	// backoff, then parks the instance.
	Compensation ParticipantFunc
	// Logger, TracerProvider: defaults per package telemetry rule.
	Logger         *slog.Logger
	TracerProvider trace.TracerProvider
}

// Participant is the participant helper: a broker.Handler (Handle) that
// makes a participant's action and compensation exactly-once and answers
// the engine, whatever the broker does.
//
// For each command it locks the step's record, decides, runs the action or
// compensation, stores the record and enqueues the reply, in one
// transaction of the ParticipantStore:
//
//   - a duplicate command (redelivered, or sent again after a timeout) does
//     not run the action again; the stored outcome is sent again as the
//     reply to the new command;
//   - a compensation that arrives before its action records the step as
//     compensated without calling Compensation (a null compensation) and
//     replies success;
//   - an action that arrives after its compensation does not run; it is
//     answered with a failure;
//   - a refused action runs again only for a different command (the engine
//     asking again), never for a redelivery of the refused one.
//
// Malformed commands (no saga headers) cannot be answered: Handle returns
// an error matching ErrMalformedCommand and dlq.ErrPermanent.
type Participant struct {
	store  ParticipantStore
	cfg    ParticipantConfig
	log    *slog.Logger
	tracer trace.Tracer
}

// NewParticipant returns a participant on store.
func NewParticipant(store ParticipantStore, cfg ParticipantConfig) (*Participant, error) {
	switch {
	case store == nil:
		return nil, fmt.Errorf("%w: nil participant store", ErrInvalidConfig)
	case cfg.Action == nil:
		return nil, fmt.Errorf("%w: participant %q has no Action", ErrInvalidConfig, cfg.Name)
	}
	if err := checkName("participant name", cfg.Name); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	return &Participant{store: store, cfg: cfg, log: telemetry.Logger(cfg.Logger),
		tracer: telemetry.Tracer(cfg.TracerProvider, "saga")}, nil
}

// Handle processes one command delivery.
func (p *Participant) Handle(ctx context.Context, d broker.Delivery) error {
	cmd, err := ParseCommand(d.Message)
	if err != nil {
		p.log.WarnContext(ctx, "saga: malformed command", "participant", p.cfg.Name, "message_id", d.ID, "error", err)
		return dlq.Permanent(err)
	}
	ctx, span := p.tracer.Start(telemetry.Continue(ctx, d.Headers), "saga.participant "+cmd.Step,
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("saga.id", cmd.SagaID), attribute.String("saga.step", cmd.Step),
			attribute.String("saga.action", cmd.Action()), attribute.String("saga.participant", p.cfg.Name),
			attribute.String("messaging.message.id", d.ID)))
	key := ParticipantKey{Participant: p.cfg.Name, SagaID: cmd.SagaID, Step: cmd.Step}
	decide := func(refused *refusal) func(context.Context, Tx, ParticipantRecord) (*ParticipantRecord, []broker.Message, error) {
		return func(ctx context.Context, tx Tx, rec ParticipantRecord) (*ParticipantRecord, []broker.Message, error) {
			if cmd.Compensate {
				return p.compensate(ctx, tx, cmd, rec, refused)
			}
			return p.act(ctx, tx, cmd, rec, refused)
		}
	}
	err = p.store.Handle(ctx, key, decide(nil))
	// A refusal rolled back what the function wrote; a second transaction
	// records it (the record may have changed in between: it decides
	// again, without running the function).
	var r *refusal
	if errors.As(err, &r) {
		err = p.store.Handle(ctx, key, decide(r))
	}
	endSpan(span, err)
	return err
}

// act decides on a command to perform the step. refused is the refusal
// of this command's first transaction, on the second.
func (p *Participant) act(ctx context.Context, tx Tx, cmd Command, rec ParticipantRecord, refused *refusal) (*ParticipantRecord, []broker.Message, error) {
	switch rec.State {
	case ParticipantDone:
		return nil, p.reply(ctx, cmd, OutcomeSuccess, rec.Payload, ""), nil
	case ParticipantCompensated:
		return nil, p.reply(ctx, cmd, OutcomeFailure, nil, "the step was compensated before this command arrived; not performed"), nil
	case ParticipantRefused:
		if rec.Command == cmd.Message.ID {
			return nil, p.reply(ctx, cmd, OutcomeFailure, nil, rec.Reason), nil
		}
	}
	if refused != nil {
		reason := cut(refused.Error(), MaxReasonBytes)
		return &ParticipantRecord{State: ParticipantRefused, Command: cmd.Message.ID, Reason: reason},
			p.reply(ctx, cmd, OutcomeFailure, nil, reason), nil
	}
	payload, err := run(ctx, tx, p.cfg.Action, cmd)
	if err != nil {
		return nil, nil, err
	}
	return &ParticipantRecord{State: ParticipantDone, Command: cmd.Message.ID, Payload: payload},
		p.reply(ctx, cmd, OutcomeSuccess, payload, ""), nil
}

// compensate decides on a command to undo the step.
func (p *Participant) compensate(ctx context.Context, tx Tx, cmd Command, rec ParticipantRecord, refused *refusal) (*ParticipantRecord, []broker.Message, error) {
	switch rec.State {
	case ParticipantCompensated:
		return nil, p.reply(ctx, cmd, OutcomeSuccess, nil, ""), nil
	case ParticipantNone, ParticipantRefused:
		// Nothing was done: record the compensation so that the action, if
		// it arrives later, does not run.
		return &ParticipantRecord{State: ParticipantCompensated, Command: rec.Command, Reason: rec.Reason},
			p.reply(ctx, cmd, OutcomeSuccess, nil, ""), nil
	}
	if refused != nil {
		return nil, p.reply(ctx, cmd, OutcomeFailure, nil, refused.Error()), nil
	}
	var payload []byte
	if p.cfg.Compensation != nil {
		var err error
		if payload, err = run(ctx, tx, p.cfg.Compensation, cmd); err != nil {
			return nil, nil, err
		}
	}
	return &ParticipantRecord{State: ParticipantCompensated, Command: rec.Command, Payload: rec.Payload},
		p.reply(ctx, cmd, OutcomeSuccess, payload, ""), nil
}

// run calls fn, turning a panic into an error and a refusal into a
// *refusal (which Handle answers in a second transaction).
func run(ctx context.Context, tx Tx, fn ParticipantFunc, cmd Command) ([]byte, error) {
	var payload []byte
	err := protect(func() error {
		var err error
		payload, err = fn(ctx, tx, cmd)
		return err
	})
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			return nil, r
		}
		if errors.Is(err, ErrRefused) {
			return nil, &refusal{err: err}
		}
		return nil, err
	}
	return payload, nil
}

func (p *Participant) reply(ctx context.Context, cmd Command, o Outcome, payload []byte, reason string) []broker.Message {
	return []broker.Message{NewReply(ctx, cmd, o, payload, reason)}
}
