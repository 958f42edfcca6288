package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// transition decides one change of one instance: it applies an event (a
// start, a reply, a timer, a request) to a working copy of the instance,
// runs local steps in the store transaction, and collects the history
// events and messages to write. Nothing reaches the store until the engine
// saves the change; a transition that loses a race is thrown away and
// decided again on the reloaded instance.
type transition struct {
	e    *Engine
	ctx  context.Context // carries the trace parent
	tx   StoreTx
	def  *definition
	inst Instance
	now  time.Time
	// cause is the ID of the message that caused the transition, the
	// causation-id of the commands it sends ("" for a start or a timer).
	cause  string
	events []Event
	msgs   []broker.Message
	// after-commit bookkeeping
	outcome   Status // a final (or parked) status reached, for metrics
	latencies []stepLatency
}

type stepLatency struct {
	step    string
	action  string
	outcome string
	d       time.Duration
}

func (e *Engine) newTransition(ctx context.Context, tx StoreTx, def *definition, inst Instance, cause string) *transition {
	return &transition{e: e, ctx: ctx, tx: tx, def: def, inst: inst, now: time.Now(), cause: cause}
}

// event appends a history event.
func (t *transition) event(kind EventKind, step string, attempt int, msgID, detail string, d time.Duration) {
	t.inst.Seq++
	t.events = append(t.events, Event{Seq: t.inst.Seq, At: t.now, Kind: kind, Step: step, Attempt: attempt,
		MessageID: msgID, Detail: cut(detail, 4*MaxReasonBytes), Duration: d})
}

// change returns what to write, with WakeAt computed.
func (t *transition) change() Change {
	t.inst.WakeAt = t.wakeAt()
	t.inst.UpdatedAt = t.now
	if t.inst.Status.Finished() && t.inst.EndedAt.IsZero() {
		t.inst.EndedAt = t.now
	}
	c := Change{Instance: t.inst, Events: t.events, Messages: t.msgs}
	if !c.Instance.WakeAt.IsZero() && c.Instance.WakeAt.Sub(t.now) < t.e.cfg.PollInterval {
		c.Notify = true
	}
	return c
}

// wakeAt is when an engine must next look at the instance.
func (t *transition) wakeAt() time.Time {
	in := &t.inst
	if in.Status.Finished() {
		return time.Time{}
	}
	var w time.Time
	earliest := func(c time.Time) {
		if !c.IsZero() && (w.IsZero() || c.Before(w)) {
			w = c
		}
	}
	if in.Timer != TimerNone {
		earliest(in.TimerAt)
	}
	if in.Status == StatusRunning && !t.pivotInFlight() {
		earliest(in.Deadline)
	}
	if in.Request != "" && !t.requestDeferred() {
		earliest(t.now)
	}
	return w
}

// requestDeferred reports whether a pending cancel must wait: the pivot's
// command is in flight, and its outcome decides whether the instance can
// still be compensated.
func (t *transition) requestDeferred() bool {
	in := &t.inst
	if in.Request != RequestCancel || in.Status != StatusRunning || in.PastPivot || in.Awaiting == "" {
		return false
	}
	s := t.step()
	return s != nil && s.kind == Pivot
}

func (t *transition) step() *stepDef {
	if t.inst.Step < 0 || t.inst.Step >= len(t.def.steps) {
		return nil
	}
	return t.def.steps[t.inst.Step]
}

func (t *transition) setStep(i int) {
	t.inst.Step = i
	t.inst.StepName = ""
	if s := t.step(); s != nil {
		t.inst.StepName = s.name
	}
	t.inst.Attempt = 0
	t.clearWait()
}

func (t *transition) clearWait() {
	t.inst.Awaiting, t.inst.AwaitingSince = "", time.Time{}
	t.inst.Timer, t.inst.TimerAt = TimerNone, time.Time{}
}

// call runs fn on a fresh decoding of the data and keeps the data fn
// leaves only when it returns nil.
func (t *transition) call(fn func(data any) error) error {
	data, err := t.def.decode(t.inst.Data)
	if err != nil {
		return fmt.Errorf("saga: decode data of instance %s: %w", t.inst.ID, err)
	}
	if err := fn(data); err != nil {
		return err
	}
	b, err := t.def.encode(data)
	if err != nil {
		return fmt.Errorf("saga: encode data of instance %s: %w", t.inst.ID, err)
	}
	t.inst.Data = b
	return nil
}

// span starts a span named "<op> <step>" for the current instance.
func (t *transition) span(op string, s *stepDef, kind trace.SpanKind) (context.Context, trace.Span) {
	return t.e.tracer.Start(t.ctx, op+" "+s.name, trace.WithSpanKind(kind), trace.WithAttributes(
		attribute.String("saga.id", t.inst.ID), attribute.String("saga.type", t.inst.Type),
		attribute.Int("saga.version", t.inst.Version), attribute.String("saga.step", s.name),
		attribute.String("saga.step.kind", s.kind.String()), attribute.Int("saga.attempt", t.inst.Attempt)))
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// advance moves the instance as far as it can go without waiting: it runs
// local steps and compensations and stops after sending a command,
// scheduling a retry, parking or finishing.
func (t *transition) advance() error {
	for {
		if t.inst.Request != "" && !t.requestDeferred() {
			if err := t.request(); err != nil {
				return err
			}
		}
		in := &t.inst
		switch in.Status {
		case StatusRunning:
			if in.Awaiting != "" || in.Timer == TimerRetry {
				return nil
			}
			if in.Step >= len(t.def.steps) {
				in.Status = StatusCompleted
				t.setStep(len(t.def.steps))
				t.event(EventCompleted, "", 0, "", "", t.now.Sub(in.CreatedAt))
				t.outcome = StatusCompleted
				return nil
			}
			s := t.step()
			if s.kind == Retriable && !in.PastPivot {
				in.PastPivot = true
			}
			if err := t.forward(s); err != nil {
				return err
			}
		case StatusCompensating:
			if in.Awaiting != "" || in.Timer == TimerRetry {
				return nil
			}
			if in.Step < 0 {
				in.Status = StatusCompensated
				t.setStep(-1)
				t.event(EventCompensated, "", 0, "", in.Failure, t.now.Sub(in.CreatedAt))
				t.outcome = StatusCompensated
				return nil
			}
			s := t.step()
			if !s.hasCompensation() {
				t.setStep(in.Step - 1)
				continue
			}
			if err := t.backward(s); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

// forward makes one attempt of step s: runs its action or sends its
// command. Errors returned are store failures; step failures change the
// instance.
func (t *transition) forward(s *stepDef) error {
	t.inst.Attempt++
	if s.local != nil {
		start := time.Now()
		ctx, span := t.span("saga.step", s, trace.SpanKindInternal)
		err := t.runLocal(ctx, s.local, s.timeout)
		endSpan(span, err)
		d := time.Since(start)
		if err == nil {
			t.event(EventStepDone, s.name, t.inst.Attempt, "", "", d)
			t.latencies = append(t.latencies, stepLatency{s.name, ActionDo, "success", d})
			t.stepSucceeded(s)
			return nil
		}
		if isStoreError(err) {
			return err
		}
		t.latencies = append(t.latencies, stepLatency{s.name, ActionDo, "failure", d})
		t.stepError(s, err, false)
		return nil
	}
	return t.send(s, false)
}

// backward makes one attempt of step s's compensation.
func (t *transition) backward(s *stepDef) error {
	t.inst.Attempt++
	if s.compLocal != nil {
		start := time.Now()
		ctx, span := t.span("saga.compensate", s, trace.SpanKindInternal)
		err := t.runLocal(ctx, s.compLocal, s.compTimeout)
		endSpan(span, err)
		d := time.Since(start)
		if err == nil {
			t.event(EventStepCompensated, s.name, t.inst.Attempt, "", "", d)
			t.latencies = append(t.latencies, stepLatency{s.name, ActionCompensate, "success", d})
			t.setStep(t.inst.Step - 1)
			return nil
		}
		if isStoreError(err) {
			return err
		}
		t.latencies = append(t.latencies, stepLatency{s.name, ActionCompensate, "failure", d})
		t.compensationError(s, err.Error())
		return nil
	}
	return t.send(s, true)
}

// storeError marks an error of the store itself (as opposed to the user's
// function) met while running a local function: the transition is
// abandoned rather than counted as the step's failure.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

func isStoreError(err error) bool {
	var se *storeError
	return errors.As(err, &se)
}

// runLocal runs a local action or compensation in a savepoint, with its
// timeout, on a fresh copy of the data.
func (t *transition) runLocal(ctx context.Context, fn func(context.Context, Tx, any) error, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var userErr error
	err := t.tx.Savepoint(ctx, func(ctx context.Context, tx Tx) error {
		userErr = t.call(func(data any) error { return protect(func() error { return fn(ctx, tx, data) }) })
		return userErr
	})
	if userErr != nil {
		return userErr
	}
	if err != nil {
		return &storeError{err}
	}
	return nil
}

// protect turns a panic of a user function into an error, so that one
// bad instance cannot take the engine down.
func protect(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("saga: panic: %v", r)
		}
	}()
	return fn()
}

// send builds and enqueues the command of s (its compensation command when
// comp), and waits for the reply.
func (t *transition) send(s *stepDef, comp bool) error {
	build, op, action, timeout := s.send, "saga.step", ActionDo, s.timeout
	if comp {
		build, op, action, timeout = s.compSend, "saga.compensate", ActionCompensate, s.compTimeout
	}
	ctx, span := t.span(op, s, trace.SpanKindProducer)
	var m broker.Message
	err := t.call(func(data any) error {
		var err error
		err = protect(func() error { m, err = build(ctx, data); return err })
		if err == nil && m.Topic == "" {
			err = Refusef("saga: step %q built a %s command without a topic", s.name, action)
		}
		return err
	})
	if err != nil {
		endSpan(span, err)
		if comp {
			t.compensationError(s, err.Error())
		} else {
			t.stepError(s, err, false)
		}
		return nil
	}
	m.ID = broker.NewID()
	m.Time = t.now
	if m.Key == "" {
		m.Key = t.inst.ID
	}
	h := make(map[string]string, len(m.Headers)+10)
	maps.Copy(h, m.Headers)
	delete(h, broker.HeaderTraceparent)
	delete(h, broker.HeaderTracestate)
	h[HeaderSagaID] = t.inst.ID
	h[HeaderType] = t.inst.Type
	h[HeaderStep] = s.name
	h[HeaderAction] = action
	h[HeaderAttempt] = strconv.Itoa(t.inst.Attempt)
	h[HeaderReplyTo] = t.e.cfg.ReplyTopic
	h[broker.HeaderCorrelationID] = t.inst.ID
	if t.cause != "" {
		h[broker.HeaderCausationID] = t.cause
	} else {
		delete(h, broker.HeaderCausationID)
	}
	m.Headers = telemetry.Inject(ctx, h)
	span.SetAttributes(attribute.String("messaging.message.id", m.ID), attribute.String("messaging.destination.name", m.Topic))
	endSpan(span, nil)
	t.msgs = append(t.msgs, m)
	t.inst.Awaiting, t.inst.AwaitingSince = m.ID, t.now
	t.inst.Timer, t.inst.TimerAt = TimerNone, time.Time{}
	if timeout > 0 {
		t.inst.Timer, t.inst.TimerAt = TimerTimeout, t.now.Add(timeout)
	}
	t.event(EventCommandSent, s.name, t.inst.Attempt, m.ID, action+" → "+m.Topic, 0)
	return nil
}

// stepSucceeded moves past step s.
func (t *transition) stepSucceeded(s *stepDef) {
	if s.kind == Pivot || s.kind == Retriable {
		t.inst.PastPivot = true
	}
	t.setStep(s.index + 1)
}

// stepError handles a failed attempt of step s: a refusal fails the step;
// another error is retried while attempts remain. uncertain says the
// participant may have acted.
func (t *transition) stepError(s *stepDef, err error, uncertain bool) {
	reason := err.Error()
	if errors.Is(err, ErrRefused) {
		t.stepFailed(s, "refused: "+reason, uncertain)
		return
	}
	if s.retry.exhausted(t.inst.Attempt) {
		t.stepFailed(s, fmt.Sprintf("failed %d attempts: %s", t.inst.Attempt, reason), uncertain)
		return
	}
	t.retryLater(s, s.retry, reason)
}

// retryLater schedules the next attempt of the current step or
// compensation after its backoff.
func (t *transition) retryLater(s *stepDef, r Retry, reason string) {
	at := t.now.Add(r.Backoff.Delay(t.inst.Attempt))
	t.inst.Awaiting, t.inst.AwaitingSince = "", time.Time{}
	t.inst.Timer, t.inst.TimerAt = TimerRetry, at
	t.event(EventRetryScheduled, s.name, t.inst.Attempt, "", at.UTC().Format(time.RFC3339Nano)+": "+reason, 0)
}

// stepFailed handles step s failing for good.
func (t *transition) stepFailed(s *stepDef, reason string, uncertain bool) {
	t.event(EventStepFailed, s.name, t.inst.Attempt, "", reason, 0)
	switch {
	case t.inst.PastPivot || s.kind == Retriable:
		t.park(fmt.Sprintf("step %q failed after the pivot: %s", s.name, reason))
	case s.kind == Pivot && uncertain:
		t.park(fmt.Sprintf("outcome of pivot %q unknown: %s", s.name, reason))
	default:
		t.compensateFrom(s, uncertain, fmt.Sprintf("step %q failed: %s", s.name, reason))
	}
}

// compensateFrom begins compensation at step s when its outcome is
// uncertain (the participant may have acted), else at the step before it.
func (t *transition) compensateFrom(s *stepDef, uncertain bool, reason string) {
	from := s.index - 1
	if uncertain && s.hasCompensation() {
		from = s.index
	}
	t.inst.Status = StatusCompensating
	t.inst.Failure = reason
	t.setStep(from)
	t.event(EventCompensating, "", 0, "", reason, 0)
}

// compensationError handles a failed attempt of the current compensation:
// retried with backoff, parked past the limit.
func (t *transition) compensationError(s *stepDef, reason string) {
	t.event(EventCompensationFailed, s.name, t.inst.Attempt, "", reason, 0)
	if s.compRetry.exhausted(t.inst.Attempt) {
		t.park(fmt.Sprintf("compensation of step %q failed %d attempts: %s", s.name, t.inst.Attempt, reason))
		return
	}
	t.retryLater(s, s.compRetry, reason)
}

// park stops the instance for an operator.
func (t *transition) park(reason string) {
	t.inst.ParkedFrom = t.inst.Status
	t.inst.Status = StatusParked
	t.inst.Failure = reason
	t.clearWait()
	t.event(EventParked, t.inst.StepName, t.inst.Attempt, "", reason, 0)
	t.outcome = StatusParked
	if t.inst.Request != "" {
		// A request made before the instance parked (a cancel waiting for
		// the pivot's outcome) no longer says what to do: the operator
		// decides again on the parked instance.
		t.event(EventRequestIgnored, t.inst.StepName, 0, "", string(t.inst.Request)+": the instance parked first", 0)
		t.inst.Request, t.inst.RequestReason = "", ""
	}
	if t.e.cfg.ParkTopic != "" {
		t.msgs = append(t.msgs, t.e.parkEvent(t.ctx, t.inst))
	}
}

// start begins a new instance.
func (t *transition) start() error {
	t.event(EventStarted, "", 0, "", fmt.Sprintf("%s version %d", t.inst.Type, t.inst.Version), 0)
	t.setStep(0)
	return t.advance()
}

// reply applies a parsed reply.
func (t *transition) reply(r Reply) error {
	in := &t.inst
	id := r.Message.ID
	action := ActionDo
	if r.Compensate {
		action = ActionCompensate
	}
	detail := func(why string) string {
		return fmt.Sprintf("%s reply (%s) to command %s: %s", action, r.Outcome, r.CommandID, why)
	}
	switch {
	case in.Status.Finished():
		t.event(EventReplyIgnored, r.Step, 0, id, detail("instance already "+string(in.Status)), 0)
		return nil
	case in.Awaiting == "" || r.CommandID != in.Awaiting:
		why := "late: not the awaited command"
		switch {
		case in.Status == StatusParked:
			why = "instance parked"
		case in.Status == StatusCompensating && !r.Compensate:
			why = "late: compensation already began"
		case in.Awaiting == "":
			why = "late: no reply awaited"
		}
		t.event(EventReplyIgnored, r.Step, 0, id, detail(why), 0)
		return nil
	}
	s := t.step()
	if s == nil || r.Step != s.name || r.Compensate != (in.Status == StatusCompensating) {
		t.event(EventReplyRejected, r.Step, 0, id,
			detail(fmt.Sprintf("answers the awaited command but names step %q (%s); awaited step %q", r.Step, action, in.StepName)), 0)
		return nil
	}
	d := t.now.Sub(in.AwaitingSince)
	outcome := string(r.Outcome)
	if r.Reason != "" {
		outcome += ": " + r.Reason
	}
	t.event(EventReply, s.name, in.Attempt, id, outcome, d)
	t.latencies = append(t.latencies, stepLatency{s.name, action, string(r.Outcome), d})
	in.Awaiting, in.AwaitingSince = "", time.Time{}
	in.Timer, in.TimerAt = TimerNone, time.Time{}
	if in.Status == StatusCompensating {
		if r.Outcome == OutcomeSuccess {
			t.event(EventStepCompensated, s.name, in.Attempt, "", "", 0)
			t.setStep(in.Step - 1)
		} else {
			t.compensationError(s, r.Reason)
		}
		return t.advance()
	}
	if r.Outcome == OutcomeFailure {
		if s.kind == Retriable {
			if s.retry.exhausted(in.Attempt) {
				t.stepFailed(s, fmt.Sprintf("failed %d attempts: %s", in.Attempt, r.Reason), false)
			} else {
				t.retryLater(s, s.retry, r.Reason)
			}
		} else {
			t.stepFailed(s, "refused: "+r.Reason, false)
		}
		return t.advance()
	}
	if s.onReply != nil {
		err := t.call(func(data any) error { return protect(func() error { return s.onReply(t.ctx, data, r) }) })
		if err != nil {
			t.event(EventReplyRejected, s.name, in.Attempt, id, "OnReply: "+err.Error(), 0)
			t.park(fmt.Sprintf("reply to step %q rejected: %v", s.name, err))
			return nil
		}
	}
	t.event(EventStepDone, s.name, in.Attempt, "", "", d)
	if in.Request == RequestCancel && s.kind == Pivot {
		t.event(EventRequestIgnored, s.name, 0, "", "cancel: the pivot succeeded; the saga carries on to completion", 0)
		in.Request, in.RequestReason = "", ""
	}
	t.stepSucceeded(s)
	return t.advance()
}

// rejectReply records a malformed reply.
func (t *transition) rejectReply(r Reply, err error) {
	t.event(EventReplyRejected, r.Step, 0, r.Message.ID, err.Error(), 0)
}

// timer applies whatever is due: a request, the deadline, the step timer.
func (t *transition) timer() error {
	in := &t.inst
	if in.Status == StatusRunning && !in.Deadline.IsZero() && !t.now.Before(in.Deadline) {
		if in.PastPivot {
			t.event(EventDeadline, in.StepName, 0, "", "deadline "+in.Deadline.UTC().Format(time.RFC3339Nano)+" passed after the pivot; carrying on", 0)
			in.Deadline = time.Time{}
		} else if !t.pivotInFlight() {
			t.cancel("deadline exceeded")
		}
	}
	if in.Timer != TimerNone && !t.now.Before(in.TimerAt) {
		s := t.step()
		switch {
		case s == nil:
			t.clearWait()
		case in.Timer == TimerRetry:
			in.Timer, in.TimerAt = TimerNone, time.Time{}
		case in.Status == StatusRunning:
			t.event(EventTimeout, s.name, in.Attempt, "", "no reply to "+in.Awaiting+" within "+s.timeout.String(), 0)
			t.latencies = append(t.latencies, stepLatency{s.name, ActionDo, "timeout", t.now.Sub(in.AwaitingSince)})
			in.Awaiting, in.AwaitingSince = "", time.Time{}
			in.Timer, in.TimerAt = TimerNone, time.Time{}
			if s.retry.exhausted(in.Attempt) {
				t.stepFailed(s, fmt.Sprintf("no reply to %d attempts", in.Attempt), true)
			}
		case in.Status == StatusCompensating:
			t.event(EventTimeout, s.name, in.Attempt, "", "no reply to compensation "+in.Awaiting+" within "+s.compTimeout.String(), 0)
			t.latencies = append(t.latencies, stepLatency{s.name, ActionCompensate, "timeout", t.now.Sub(in.AwaitingSince)})
			in.Awaiting, in.AwaitingSince = "", time.Time{}
			in.Timer, in.TimerAt = TimerNone, time.Time{}
			if s.compRetry.exhausted(in.Attempt) {
				t.park(fmt.Sprintf("compensation of step %q: no reply to %d attempts", s.name, in.Attempt))
			}
		default:
			t.clearWait()
		}
	}
	return t.advance()
}

// pivotInFlight reports whether the pivot's command awaits its reply.
func (t *transition) pivotInFlight() bool {
	s := t.step()
	return t.inst.Status == StatusRunning && t.inst.Awaiting != "" && s != nil && s.kind == Pivot
}

// cancel compensates a running instance that has not passed its pivot.
func (t *transition) cancel(reason string) {
	in := &t.inst
	s := t.step()
	if s == nil {
		return
	}
	uncertain := s.send != nil && in.Attempt > 0
	t.event(EventCancelled, s.name, in.Attempt, "", reason, 0)
	t.compensateFrom(s, uncertain, "cancelled: "+reason)
}

// request carries out the pending operator request.
func (t *transition) request() error {
	in := &t.inst
	kind, reason := in.Request, in.RequestReason
	in.Request, in.RequestReason = "", ""
	ignore := func(why string) {
		t.event(EventRequestIgnored, in.StepName, 0, "", fmt.Sprintf("%s: %s", kind, why), 0)
	}
	switch kind {
	case RequestCancel:
		switch {
		case in.Status == StatusRunning && in.PastPivot:
			ignore("the instance is past its pivot")
		case in.Status == StatusRunning:
			t.cancel(orDefault(reason, "cancelled by request"))
		case in.Status == StatusParked:
			in.Status = StatusAborted
			t.event(EventAborted, in.StepName, 0, "", orDefault(reason, "cancelled while parked"), 0)
			t.outcome = StatusAborted
			t.clearWait()
		default:
			ignore("the instance is " + string(in.Status))
		}
	case RequestRetry, RequestSkip:
		if in.Status != StatusParked {
			ignore("the instance is " + string(in.Status) + ", not parked")
			return nil
		}
		from := in.ParkedFrom
		if from != StatusRunning && from != StatusCompensating {
			from = StatusRunning
		}
		in.Status, in.ParkedFrom = from, ""
		if kind == RequestRetry {
			t.event(EventResumed, in.StepName, 0, "", reason, 0)
			in.Attempt = 0
			t.clearWait()
			return nil
		}
		s := t.step()
		t.event(EventSkipped, in.StepName, 0, "", reason, 0)
		switch {
		case s == nil:
		case from == StatusCompensating:
			t.event(EventStepCompensated, s.name, 0, "", "skipped by an operator", 0)
			t.setStep(s.index - 1)
		default:
			t.stepSucceeded(s)
		}
	default:
		ignore("unknown request")
	}
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// parkEvent is the message announcing a parked instance on
// Config.ParkTopic.
func (e *Engine) parkEvent(ctx context.Context, in Instance) broker.Message {
	payload, _ := json.Marshal(struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Version int    `json:"version"`
		Step    string `json:"step"`
		From    Status `json:"parked_from"`
		Reason  string `json:"reason"`
	}{in.ID, in.Type, in.Version, in.StepName, in.ParkedFrom, in.Failure})
	m := broker.NewMessage(e.cfg.ParkTopic, payload)
	m.Key = in.ID
	m.Headers = telemetry.Inject(ctx, map[string]string{
		broker.HeaderType:          "saga.parked",
		broker.HeaderContentType:   "application/json",
		broker.HeaderCorrelationID: in.ID,
		HeaderSagaID:               in.ID,
		HeaderType:                 in.Type,
	})
	return m
}
