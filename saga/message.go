package saga

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// The saga protocol's headers. Commands carry HeaderSagaID, HeaderType,
// HeaderStep, HeaderAction, HeaderAttempt and HeaderReplyTo; replies carry
// HeaderSagaID, HeaderStep, HeaderAction, HeaderCommand, HeaderOutcome and,
// for a failure, HeaderReason. Both also carry broker.HeaderCorrelationID
// (the instance ID), broker.HeaderCausationID (the message they answer or
// follow) and the W3C trace context. Every name starts with
// broker.ReservedHeaderPrefix.
const (
	// HeaderSagaID is the instance ID.
	HeaderSagaID = broker.ReservedHeaderPrefix + "saga-id"
	// HeaderType is the saga type (definition name), on commands.
	HeaderType = broker.ReservedHeaderPrefix + "saga-type"
	// HeaderStep is the step name.
	HeaderStep = broker.ReservedHeaderPrefix + "saga-step"
	// HeaderAction is ActionDo or ActionCompensate.
	HeaderAction = broker.ReservedHeaderPrefix + "saga-action"
	// HeaderAttempt is the attempt number of a command, from 1.
	HeaderAttempt = broker.ReservedHeaderPrefix + "saga-attempt"
	// HeaderReplyTo is the topic a participant sends its reply to.
	HeaderReplyTo = broker.ReservedHeaderPrefix + "saga-reply-to"
	// HeaderCommand is, on a reply, the ID of the command it answers.
	HeaderCommand = broker.ReservedHeaderPrefix + "saga-command"
	// HeaderOutcome is, on a reply, OutcomeSuccess or OutcomeFailure.
	HeaderOutcome = broker.ReservedHeaderPrefix + "saga-outcome"
	// HeaderReason is, on a failure reply, why (at most MaxReasonBytes).
	HeaderReason = broker.ReservedHeaderPrefix + "saga-reason"
)

// Values of HeaderAction.
const (
	ActionDo         = "do"
	ActionCompensate = "compensate"
)

// Outcome is a participant's answer to a command.
type Outcome string

// Values of HeaderOutcome.
const (
	OutcomeSuccess Outcome = "success"
	OutcomeFailure Outcome = "failure"
)

// MaxReasonBytes bounds a failure reason carried in a header and recorded
// in the history; longer reasons are cut at a rune boundary.
const MaxReasonBytes = 1024

// Command is a saga command as a participant receives it.
type Command struct {
	// SagaID is the instance ID; SagaType its definition name.
	SagaID   string
	SagaType string
	// Step is the step name.
	Step string
	// Compensate is true for a request to undo the step.
	Compensate bool
	// Attempt counts the engine's attempts of this step (or compensation),
	// from 1. A participant that refused attempt n runs the action again for
	// a later attempt (a retriable step asks again after a refusal).
	Attempt int
	// ReplyTo is the topic of the reply.
	ReplyTo string
	// Message is the delivered message: payload, user headers, ID.
	Message broker.Message
}

// Decode unmarshals the command's JSON payload into v.
func (c Command) Decode(v any) error {
	if err := json.Unmarshal(c.Message.Payload, v); err != nil {
		return fmt.Errorf("saga: command %s of step %q (saga %s): %w", c.Message.ID, c.Step, c.SagaID, err)
	}
	return nil
}

// Action returns ActionDo or ActionCompensate.
func (c Command) Action() string {
	if c.Compensate {
		return ActionCompensate
	}
	return ActionDo
}

// ParseCommand reads the saga headers of a delivered command. The error
// wraps ErrMalformedCommand when one is missing or invalid: such a message
// cannot be answered, so handlers should dead-letter it.
func ParseCommand(m broker.Message) (Command, error) {
	bad := func(why string) (Command, error) {
		return Command{}, fmt.Errorf("%w: message %q on %q: %s", ErrMalformedCommand, m.ID, m.Topic, why)
	}
	c := Command{SagaID: m.Headers[HeaderSagaID], SagaType: m.Headers[HeaderType],
		Step: m.Headers[HeaderStep], ReplyTo: m.Headers[HeaderReplyTo], Message: m}
	if err := checkName("saga ID", c.SagaID); err != nil {
		return bad(err.Error())
	}
	if err := checkName("step name", c.Step); err != nil {
		return bad(err.Error())
	}
	if c.ReplyTo == "" {
		return bad("no " + HeaderReplyTo + " header")
	}
	if err := checkName("message ID", m.ID); err != nil {
		return bad(err.Error())
	}
	switch m.Headers[HeaderAction] {
	case ActionDo:
	case ActionCompensate:
		c.Compensate = true
	default:
		return bad(fmt.Sprintf("%s is %q, want %q or %q", HeaderAction, m.Headers[HeaderAction], ActionDo, ActionCompensate))
	}
	n, err := strconv.Atoi(m.Headers[HeaderAttempt])
	if err != nil || n < 1 {
		return bad(fmt.Sprintf("%s is %q, want a positive integer", HeaderAttempt, m.Headers[HeaderAttempt]))
	}
	c.Attempt = n
	return c, nil
}

// NewReply returns the reply to c: on c.ReplyTo, keyed by the instance ID,
// with the saga headers, correlation-id (the instance), causation-id (the
// command) and the trace context of ctx (or, when ctx has none, the
// command's). For OutcomeFailure, reason is carried (cut to
// MaxReasonBytes); payload is opaque to the engine and given to the step's
// OnReply hook for a success.
func NewReply(ctx context.Context, c Command, outcome Outcome, payload []byte, reason string) broker.Message {
	m := broker.NewMessage(c.ReplyTo, payload)
	m.Key = c.SagaID
	h := map[string]string{
		HeaderSagaID:               c.SagaID,
		HeaderStep:                 c.Step,
		HeaderAction:               c.Action(),
		HeaderCommand:              c.Message.ID,
		HeaderOutcome:              string(outcome),
		broker.HeaderCorrelationID: c.SagaID,
		broker.HeaderCausationID:   c.Message.ID,
	}
	if outcome == OutcomeFailure {
		h[HeaderReason] = cut(reason, MaxReasonBytes)
	}
	h = telemetry.Inject(ctx, h)
	if h[broker.HeaderTraceparent] == "" {
		if tp := c.Message.Headers[broker.HeaderTraceparent]; tp != "" {
			h[broker.HeaderTraceparent] = tp
			if ts := c.Message.Headers[broker.HeaderTracestate]; ts != "" {
				h[broker.HeaderTracestate] = ts
			}
		}
	}
	m.Headers = h
	return m
}

// Reply is a participant's reply as the engine hands it to a step's OnReply
// hook.
type Reply struct {
	SagaID string
	Step   string
	// Compensate is true for the reply to a compensation.
	Compensate bool
	// CommandID is the ID of the command it answers.
	CommandID string
	Outcome   Outcome
	// Reason is the failure reason, "" on success.
	Reason string
	// Message is the delivered reply.
	Message broker.Message
}

// Decode unmarshals the reply's JSON payload into v.
func (r Reply) Decode(v any) error {
	if err := json.Unmarshal(r.Message.Payload, v); err != nil {
		return fmt.Errorf("saga: reply %s of step %q (saga %s): %w", r.Message.ID, r.Step, r.SagaID, err)
	}
	return nil
}

// parseReply reads a reply's headers. It returns the instance ID whenever
// the message names one (so a reply that is otherwise malformed can be
// recorded in that instance's history) and an error wrapping
// ErrMalformedReply for anything missing or invalid.
func parseReply(m broker.Message) (Reply, error) {
	r := Reply{SagaID: m.Headers[HeaderSagaID], Step: m.Headers[HeaderStep],
		CommandID: m.Headers[HeaderCommand], Outcome: Outcome(m.Headers[HeaderOutcome]),
		Reason: m.Headers[HeaderReason], Message: m}
	bad := func(why string) (Reply, error) {
		return r, fmt.Errorf("%w: message %q on %q: %s", ErrMalformedReply, m.ID, m.Topic, why)
	}
	// Without a usable message ID a reply can neither be deduplicated nor
	// recorded: it is not attributed to any instance.
	if err := checkName("message ID", m.ID); err != nil {
		r.SagaID = ""
		return bad(err.Error())
	}
	if err := checkName("saga ID", r.SagaID); err != nil {
		r.SagaID = ""
		return bad(err.Error())
	}
	if err := checkName("step name", r.Step); err != nil {
		return bad(err.Error())
	}
	switch m.Headers[HeaderAction] {
	case ActionDo:
	case ActionCompensate:
		r.Compensate = true
	default:
		return bad(fmt.Sprintf("%s is %q, want %q or %q", HeaderAction, m.Headers[HeaderAction], ActionDo, ActionCompensate))
	}
	if r.CommandID == "" {
		return bad("no " + HeaderCommand + " header")
	}
	switch r.Outcome {
	case OutcomeSuccess, OutcomeFailure:
	default:
		return bad(fmt.Sprintf("%s is %q, want %q or %q", HeaderOutcome, r.Outcome, OutcomeSuccess, OutcomeFailure))
	}
	r.Reason = cut(r.Reason, MaxReasonBytes)
	return r, nil
}

// cut shortens s to at most n bytes at a rune boundary, replacing invalid
// UTF-8, so that it is safe to store as text.
func cut(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
