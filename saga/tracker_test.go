package saga_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
	sagamem "github.com/steadfast-go/steadfast/saga/memory"
)

func TestTrackerConfig(t *testing.T) {
	flows := sagamem.NewFlows()
	for name, cfg := range map[string]saga.TrackerConfig{
		"no flows":      {},
		"no name":       {Flows: []saga.FlowSpec{{Terminal: []string{"x"}}}},
		"no terminal":   {Flows: []saga.FlowSpec{{Name: "f", Events: []string{"a"}}}},
		"empty type":    {Flows: []saga.FlowSpec{{Name: "f", Events: []string{""}, Terminal: []string{"x"}}}},
		"twice":         {Flows: []saga.FlowSpec{{Name: "f", Terminal: []string{"x"}}, {Name: "f", Terminal: []string{"y"}}}},
		"shared type":   {Flows: []saga.FlowSpec{{Name: "f", Terminal: []string{"x"}}, {Name: "g", Events: []string{"x"}, Terminal: []string{"y"}}}},
		"name with NUL": {Flows: []saga.FlowSpec{{Name: "f\x00", Terminal: []string{"x"}}}},
	} {
		if _, err := saga.NewTracker(flows, cfg); !errors.Is(err, saga.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := saga.NewTracker(nil, saga.TrackerConfig{Flows: []saga.FlowSpec{{Name: "f", Terminal: []string{"x"}}}}); !errors.Is(err, saga.ErrInvalidConfig) {
		t.Errorf("nil store: %v", err)
	}
	// A type listed as an event and as terminal of one flow is fine.
	if _, err := saga.NewTracker(flows, saga.TrackerConfig{Flows: []saga.FlowSpec{{Name: "f", Events: []string{"x"}, Terminal: []string{"x"}}}}); err != nil {
		t.Errorf("event also terminal: %v", err)
	}
}

func TestTrackerIgnoresUntrackable(t *testing.T) {
	ctx := context.Background()
	flows := sagamem.NewFlows()
	tr, err := saga.NewTracker(flows, saga.TrackerConfig{Flows: []saga.FlowSpec{{Name: "f", Events: []string{"a"}, Terminal: []string{"z"}}}})
	if err != nil {
		t.Fatal(err)
	}
	ok := broker.NewMessage("t", nil)
	ok.Headers = map[string]string{broker.HeaderType: "a", broker.HeaderCorrelationID: "c-1"}
	bad := []broker.Message{
		{ID: "1", Headers: map[string]string{broker.HeaderType: "a"}},                                        // no correlation
		{ID: "2", Headers: map[string]string{broker.HeaderType: "other", broker.HeaderCorrelationID: "c-1"}}, // untracked type
		{ID: "", Headers: map[string]string{broker.HeaderType: "a", broker.HeaderCorrelationID: "c-1"}},      // no ID
		{ID: "4", Headers: map[string]string{broker.HeaderType: "a", broker.HeaderCorrelationID: "c\x00"}},   // hostile correlation
		{ID: "5", Headers: map[string]string{broker.HeaderType: "a", broker.HeaderCorrelationID: strings.Repeat("c", 300)}},
	}
	for _, m := range append(bad, ok) {
		if err := tr.Handle(ctx, broker.Delivery{Message: m}); err != nil {
			t.Errorf("handle %q: %v", m.ID, err)
		}
	}
	fs, _ := flows.Flows(ctx, saga.FlowQuery{})
	if len(fs) != 1 || fs[0].CorrelationID != "c-1" || fs[0].Events != 1 || fs[0].Done || !fs[0].DueAt.IsZero() {
		t.Errorf("flows %+v", fs)
	}
	ft, err := tr.Flow(ctx, "c-1")
	if err != nil || len(ft.Events) != 1 || !strings.Contains(ft.Mermaid(), "participant p0 as unknown") {
		t.Errorf("flow %+v %v", ft, err)
	}
	if _, err := tr.Flow(ctx, "c-2"); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("missing flow: %v", err)
	}
}

func TestTimelineString(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tl := saga.Timeline{
		Instance: saga.Instance{ID: "o-1", Type: "order", Version: 2, Status: saga.StatusParked, ParkedFrom: saga.StatusCompensating,
			StepName: "reserve", Attempt: 3, CreatedAt: t0, Failure: "compensation failed", Request: saga.RequestRetry},
		Events: []saga.Event{
			{Seq: 1, At: t0, Kind: saga.EventStarted},
			{Seq: 2, At: t0.Add(time.Millisecond), Kind: saga.EventCommandSent, Step: "reserve", Attempt: 1, MessageID: "m-1", Detail: "do → inventory"},
			{Seq: 3, At: t0.Add(5 * time.Millisecond), Kind: saga.EventReply, Step: "reserve", Attempt: 1, MessageID: "m-2", Detail: "success", Duration: 4 * time.Millisecond},
			{Seq: 4, At: t0.Add(5 * time.Millisecond), Kind: saga.EventStepDone, Step: "reserve", Attempt: 1},
			{Seq: 5, At: t0.Add(9 * time.Millisecond), Kind: saga.EventStepFailed, Step: "charge", Attempt: 1, Detail: "refused:\ncard declined"},
			{Seq: 6, At: t0.Add(9 * time.Millisecond), Kind: saga.EventCompensating},
			{Seq: 7, At: t0.Add(9 * time.Millisecond), Kind: saga.EventCommandSent, Step: "reserve", Attempt: 1, MessageID: "m-3", Detail: "compensate → inventory"},
			{Seq: 8, At: t0.Add(20 * time.Millisecond), Kind: saga.EventCompensationFailed, Step: "reserve", Attempt: 1, Detail: "warehouse down"},
		},
	}
	s := tl.String()
	for _, want := range []string{"saga o-1: order version 2, parked (from compensating) at step \"reserve\" attempt 3",
		"failure: compensation failed", "pending request: retry", "3    5ms   reply", "4ms", "refused: card declined"} {
		if !strings.Contains(s, want) {
			t.Errorf("timeline lacks %q:\n%s", want, s)
		}
	}
	steps := tl.Steps()
	if len(steps) != 2 || steps[0].Step != "reserve" || steps[0].Attempts != 1 || steps[0].CompensationAttempts != 1 ||
		!steps[0].Done || steps[0].Compensated || len(steps[0].Errors) != 1 || steps[1].Step != "charge" || !steps[1].Failed {
		t.Errorf("steps %+v", steps)
	}
}
