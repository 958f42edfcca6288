package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// How the relay publishes one claimed batch and pins each failure on its
// row: see the Relay's documentation for the rules this file implements.

// row is one claimed record on its way through publish.
type row struct {
	rec   Record
	state rowState
	err   error
}

type rowState int

const (
	rowHeld      rowState = iota // released unchanged: behind a failure of its key, or not attempted
	rowSend                      // being published
	rowBad                       // can never be published: parked if its key's earlier rows publish
	rowPublished                 // the broker accepted it
	rowFailed                    // the broker did not accept it; err says why
)

// errClass is what a publish error means for the row it concerns.
type errClass int

const (
	classRefused   errClass = iota // the broker refused this message: charge an attempt
	classPermanent                 // the message can never be published: park it
	classTransient                 // the broker is unavailable: charge nothing
)

func (r *Relay) classify(err error) errClass {
	switch {
	case r.permanent(err):
		return classPermanent
	case r.transient(err):
		return classTransient
	}
	return classRefused
}

func (r *Relay) permanent(err error) bool {
	if errors.Is(err, broker.ErrEmptyTopic) || errors.Is(err, broker.ErrMessageTooLarge) || errors.Is(err, broker.ErrInvalidMessage) {
		return true
	}
	return r.cfg.Permanent != nil && r.cfg.Permanent(err)
}

// transient reports errors that say the broker, not the message, is the
// problem: timeouts, cancellations, closed publishers, network errors, and
// errors that report themselves as temporary or timeouts.
func (r *Relay) transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, broker.ErrUnavailable) || errors.Is(err, broker.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var tmp interface{ Temporary() bool }
	if errors.As(err, &tmp) && tmp.Temporary() {
		return true
	}
	var to interface{ Timeout() bool }
	if errors.As(err, &to) && to.Timeout() {
		return true
	}
	return r.cfg.Transient != nil && r.cfg.Transient(err)
}

// publish publishes recs and returns the store update, and the broker error
// when the broker was (at least partly) unavailable, so the relay backs off.
// When stop is not zero, no Publish call runs past it, and cut reports that
// rows were held because it came.
func (r *Relay) publish(ctx context.Context, recs []Record, stop time.Time) (out Outcome, outage error, cut bool) {
	rows := make([]*row, len(recs))
	badKey := make(map[string]bool)
	var send []*row
	for i, rec := range recs {
		w := &row{rec: rec}
		rows[i] = w
		key := rec.Message.Key
		if key != "" && badKey[key] {
			continue // held behind a bad row of its key
		}
		if reason := r.check(rec); reason != nil {
			w.state, w.err = rowBad, reason
			if key != "" {
				badKey[key] = true
			}
			continue
		}
		w.state = rowSend
		send = append(send, w)
	}

	if len(send) > 0 && !stop.IsZero() && !time.Now().Before(stop) {
		// The claim took (nearly) its whole lifetime to be made: there is no
		// time to publish anything.
		r.log.Warn("outbox: claim deadline passed before publishing; rows left for a later claim",
			"rows", len(send), "publish_until", stop)
		for _, w := range send {
			w.state = rowHeld
		}
		send, cut = nil, true
	}
	if len(send) > 0 {
		if !stop.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, stop)
			defer cancel()
		}
		start := time.Now()
		err := r.attempt(ctx, send)
		r.m.batchDuration(ctx, time.Since(start), len(send), err == nil)
		switch {
		case err == nil:
		case r.transient(err):
			for _, w := range send {
				w.state = rowHeld
			}
			outage = err
		case len(send) == 1:
			send[0].state, send[0].err = rowFailed, err
		default:
			// The call failed as a whole without saying which message is
			// at fault: publish one at a time to find out.
			if r.isolate(ctx, send, stop) {
				cut = true
			}
		}
	}
	out, transientErr := r.outcome(rows)
	if outage == nil {
		outage = transientErr
	}
	return out, outage, cut
}

// check returns why rec can never be published, or nil.
func (r *Relay) check(rec Record) error {
	if rec.Malformed != "" {
		return fmt.Errorf("outbox: malformed row: %s", rec.Malformed)
	}
	if err := rec.Message.Validate(r.max); err != nil {
		return fmt.Errorf("outbox: invalid message: %w", err)
	}
	if rec.Message.ID == "" {
		return errors.New("outbox: invalid message: empty ID")
	}
	return nil
}

// attempt publishes rows in one call. On nil every row is published. When
// the broker answers with a *broker.PublishError naming valid indexes, the
// named rows fail with their errors, the others are published, and attempt
// returns nil. Any other error is returned with the rows left as they were.
func (r *Relay) attempt(ctx context.Context, rows []*row) error {
	msgs := make([]broker.Message, len(rows))
	for i, w := range rows {
		msgs[i] = w.rec.Message
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	defer cancel()
	ctx, span := r.trace.Start(pctx, "outbox publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.Int("messaging.batch.message_count", len(msgs)),
			attribute.String("outbox.name", r.cfg.Name)))
	endMessages := r.messageSpans(ctx, msgs)
	err := r.pub.Publish(ctx, msgs...)
	telemetry.End(span, err)
	if err == nil {
		endMessages(nil, nil)
		for _, w := range rows {
			w.state = rowPublished
		}
		return nil
	}
	var pe *broker.PublishError
	if !errors.As(err, &pe) || len(pe.Failures) == 0 {
		endMessages(err, nil)
		return err
	}
	failed := make(map[int]error, len(pe.Failures))
	for _, f := range pe.Failures {
		if f.Index < 0 || f.Index >= len(rows) {
			endMessages(err, nil)
			return err // not a report we can trust row by row
		}
		ferr := f.Err
		if ferr == nil {
			ferr = errors.New("broker refused the message")
		}
		failed[f.Index] = ferr
	}
	endMessages(nil, failed)
	for i, w := range rows {
		if ferr, ok := failed[i]; ok {
			w.state, w.err = rowFailed, ferr
		} else {
			w.state = rowPublished
		}
	}
	return nil
}

// isolate publishes rows one at a time after a call carrying all of them
// failed without naming the culprit. Each key stops at its first failure.
// After two transient failures without any success (the broker is down), or
// three in all, the remaining rows are held. When stop is not zero, a call
// that PublishTimeout could carry past stop is not started: the remaining
// rows are held and isolate reports true.
func (r *Relay) isolate(ctx context.Context, rows []*row, stop time.Time) bool {
	for _, w := range rows {
		w.state = rowHeld
	}
	failedKey := make(map[string]bool)
	succeeded, transient, tried := false, 0, 0
	for i, w := range rows {
		key := w.rec.Message.Key
		if key != "" && failedKey[key] {
			continue
		}
		if !stop.IsZero() && time.Now().Add(r.cfg.PublishTimeout).After(stop) {
			left := 0
			for _, x := range rows[i:] {
				if k := x.rec.Message.Key; k == "" || !failedKey[k] {
					left++
				}
			}
			if tried == 0 {
				r.log.Warn("outbox: no time to publish one row before the claim's deadline; rows left for a later claim "+
					"(PublishTimeout must be well below the store's claim timeout)",
					"rows", left, "publish_timeout", r.cfg.PublishTimeout, "publish_until", stop)
			} else {
				r.log.Warn("outbox: claim deadline near; stopped publishing one row at a time, rows left for a later claim",
					"tried", tried, "rows", left, "publish_until", stop)
			}
			return true
		}
		tried++
		w.state = rowSend
		if err := r.attempt(ctx, []*row{w}); err != nil {
			w.state, w.err = rowFailed, err
		}
		if w.state == rowPublished {
			succeeded = true
			continue
		}
		if key != "" {
			failedKey[key] = true
		}
		if r.transient(w.err) {
			// The broker is down, or partly: stop before the claim has been
			// held for many publish timeouts.
			if transient++; transient >= 3 || !succeeded && transient >= 2 {
				return false
			}
		}
	}
	return false
}

// outcome turns the rows' states into the store update, and returns the
// error of a transient failure if there was one. For each key, in ID order:
// published rows are published; the first row that failed is charged (or
// parked, when the error is permanent or MaxAttempts is reached), or held
// when the failure was transient; every later unpublished row of the key is
// held. A bad row is parked only when every earlier row of its key in the
// batch was published, so a parked row never sits behind an unpublished one.
func (r *Relay) outcome(rows []*row) (Outcome, error) {
	var out Outcome
	var transientErr error
	stopped := make(map[string]bool) // keys with an unpublished row so far
	for _, w := range rows {
		key := w.rec.Message.Key
		blocked := key != "" && stopped[key]
		switch w.state {
		case rowPublished:
			out.Published = append(out.Published, w.rec.ID)
			if blocked {
				r.log.Warn("outbox: broker accepted a message after refusing an earlier one of its key; key order is broken",
					"id", w.rec.ID, "key", key)
			}
			continue
		case rowFailed:
			if r.classify(w.err) == classTransient {
				transientErr = w.err
			} else if !blocked {
				out.Failed = append(out.Failed, r.failure(w.rec, w.err))
			}
		case rowBad:
			if !blocked {
				out.Failed = append(out.Failed, Failure{ID: w.rec.ID, Reason: w.err.Error(), Park: true})
			}
		}
		if key != "" {
			stopped[key] = true
		}
	}
	return out, transientErr
}

func (r *Relay) failure(rec Record, err error) Failure {
	attempts := rec.Attempts + 1
	f := Failure{ID: rec.ID, Reason: err.Error()}
	switch {
	case r.permanent(err):
		f.Park = true
		f.Reason = "permanent publish error: " + f.Reason
	case attempts >= r.cfg.MaxAttempts:
		f.Park = true
		f.Reason = fmt.Sprintf("gave up after %d attempts: %s", attempts, f.Reason)
	default:
		f.RetryAfter = r.cfg.Backoff.Delay(attempts)
	}
	return f
}
