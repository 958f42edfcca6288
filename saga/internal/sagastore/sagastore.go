// Package sagastore holds what every saga.Store implementation shares and
// users of package saga need not see: how an operator request is checked
// against an instance and recorded on it.
package sagastore

import (
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/saga"
)

// CheckRequest reports why r does not apply to in, with an error wrapping
// saga.ErrFinished, saga.ErrNotParked, saga.ErrPastPivot or
// saga.ErrInvalidConfig (an unknown kind). pkg starts the error text.
func CheckRequest(pkg string, in saga.Instance, r saga.Request) error {
	switch r.Kind {
	case saga.RequestCancel:
		switch {
		case in.Status.Finished():
			return fmt.Errorf("%s: cancel %s: %w (%s)", pkg, in.ID, saga.ErrFinished, in.Status)
		case in.Status == saga.StatusRunning && in.PastPivot:
			return fmt.Errorf("%s: cancel %s: %w", pkg, in.ID, saga.ErrPastPivot)
		}
	case saga.RequestRetry, saga.RequestSkip:
		switch {
		case in.Status.Finished():
			return fmt.Errorf("%s: %s %s: %w (%s)", pkg, r.Kind, in.ID, saga.ErrFinished, in.Status)
		case in.Status != saga.StatusParked:
			return fmt.Errorf("%s: %s %s: %w (%s)", pkg, r.Kind, in.ID, saga.ErrNotParked, in.Status)
		}
	default:
		return fmt.Errorf("%s: request %q on %s: %w: unknown request kind", pkg, r.Kind, in.ID, saga.ErrInvalidConfig)
	}
	return nil
}

// ApplyRequest records r on in (pending request, wake now, next history
// sequence number) and returns the history event to append. The caller
// writes in with its revision incremented.
func ApplyRequest(in *saga.Instance, r saga.Request, now time.Time) saga.Event {
	in.Request, in.RequestReason = r.Kind, r.Reason
	if in.WakeAt.IsZero() || now.Before(in.WakeAt) {
		in.WakeAt = now
	}
	in.UpdatedAt = now
	in.Seq++
	detail := string(r.Kind)
	if r.Reason != "" {
		detail += ": " + r.Reason
	}
	return saga.Event{Seq: in.Seq, At: now, Kind: saga.EventRequested, Step: in.StepName, Detail: detail}
}
