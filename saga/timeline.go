package saga

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"
)

// Timeline is an instance with its whole history: what an operator reads
// to see where an instance stands and how it got there.
type Timeline struct {
	Instance Instance
	Events   []Event
}

// LoadTimeline reads an instance and its history from store. It needs no
// engine and no definitions, so operator tools can use it.
func LoadTimeline(ctx context.Context, store Store, id string) (Timeline, error) {
	inst, err := store.Get(ctx, id)
	if err != nil {
		return Timeline{}, err
	}
	evs, err := store.History(ctx, id, 0, 0)
	if err != nil {
		return Timeline{}, err
	}
	return Timeline{Instance: inst, Events: evs}, nil
}

// StepSummary condenses the history of one step.
type StepSummary struct {
	Step string
	// Attempts counts the attempts of the step (commands sent or local
	// runs); CompensationAttempts those of its compensation.
	Attempts, CompensationAttempts int
	// First and Last are the times of the step's first and last events.
	First, Last time.Time
	// Done, Failed and Compensated say how the step ended.
	Done, Failed, Compensated bool
	// Errors lists the failure details recorded for the step, in order.
	Errors []string
}

// Steps summarizes the history per step, in the order the steps first
// appear.
func (tl Timeline) Steps() []StepSummary {
	var out []StepSummary
	idx := map[string]int{}
	compensating := false
	for _, ev := range tl.Events {
		if ev.Kind == EventCompensating {
			compensating = true
		}
		if ev.Step == "" {
			continue
		}
		i, ok := idx[ev.Step]
		if !ok {
			i = len(out)
			idx[ev.Step] = i
			out = append(out, StepSummary{Step: ev.Step, First: ev.At})
		}
		s := &out[i]
		s.Last = ev.At
		switch ev.Kind {
		case EventCommandSent:
			if strings.HasPrefix(ev.Detail, ActionCompensate) {
				s.CompensationAttempts++
			} else {
				s.Attempts++
			}
		case EventStepDone:
			s.Done = true
			if ev.Duration > 0 && ev.MessageID == "" && !hasCommand(tl.Events, ev.Step) {
				s.Attempts = max(s.Attempts, ev.Attempt)
			}
		case EventStepFailed:
			s.Failed = true
			s.Errors = append(s.Errors, ev.Detail)
		case EventStepCompensated:
			s.Compensated = true
			if !hasCommand(tl.Events, ev.Step) {
				s.CompensationAttempts = max(s.CompensationAttempts, ev.Attempt)
			}
		case EventCompensationFailed, EventReplyRejected, EventParked:
			s.Errors = append(s.Errors, ev.Detail)
		case EventRetryScheduled:
			if !compensating {
				s.Attempts = max(s.Attempts, ev.Attempt)
			}
			s.Errors = append(s.Errors, ev.Detail)
		}
	}
	return out
}

func hasCommand(evs []Event, step string) bool {
	for _, ev := range evs {
		if ev.Step == step && ev.Kind == EventCommandSent {
			return true
		}
	}
	return false
}

// String renders the instance and its history as text: a header, then one
// line per event with its offset from the start.
func (tl Timeline) String() string {
	var b strings.Builder
	in := tl.Instance
	fmt.Fprintf(&b, "saga %s: %s version %d, %s", in.ID, in.Type, in.Version, in.Status)
	if in.Status == StatusParked {
		fmt.Fprintf(&b, " (from %s)", in.ParkedFrom)
	}
	if in.StepName != "" && !in.Status.Finished() {
		fmt.Fprintf(&b, " at step %q attempt %d", in.StepName, in.Attempt)
	}
	b.WriteByte('\n')
	fmt.Fprintf(&b, "started %s", in.CreatedAt.UTC().Format(time.RFC3339Nano))
	if !in.EndedAt.IsZero() {
		fmt.Fprintf(&b, ", ended %s (%s)", in.EndedAt.UTC().Format(time.RFC3339Nano), in.EndedAt.Sub(in.CreatedAt).Round(time.Millisecond))
	}
	b.WriteByte('\n')
	if in.Failure != "" {
		fmt.Fprintf(&b, "failure: %s\n", in.Failure)
	}
	if in.Awaiting != "" {
		fmt.Fprintf(&b, "awaiting reply to %s since %s\n", in.Awaiting, in.AwaitingSince.UTC().Format(time.RFC3339Nano))
	}
	if in.Request != "" {
		fmt.Fprintf(&b, "pending request: %s", in.Request)
		if in.RequestReason != "" {
			fmt.Fprintf(&b, " (%s)", in.RequestReason)
		}
		b.WriteByte('\n')
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tT+\tEVENT\tSTEP\tATTEMPT\tMESSAGE\tTOOK\tDETAIL")
	for _, ev := range tl.Events {
		att, took := "", ""
		if ev.Attempt > 0 {
			att = fmt.Sprint(ev.Attempt)
		}
		if ev.Duration > 0 {
			took = ev.Duration.Round(time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ev.Seq, ev.At.Sub(in.CreatedAt).Round(time.Microsecond),
			ev.Kind, ev.Step, att, ev.MessageID, took, oneLine(ev.Detail))
	}
	_ = tw.Flush()
	return b.String()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
