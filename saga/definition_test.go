package saga_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

type data struct{ N int }

func cmd(topic string) func(context.Context, *data) (broker.Message, error) {
	return func(context.Context, *data) (broker.Message, error) { return broker.Message{Topic: topic}, nil }
}

func local(context.Context, saga.Tx, *data) error { return nil }

func TestDefineRejects(t *testing.T) {
	ok := saga.Step[data]{Name: "a", Command: cmd("t")}
	for _, c := range []struct {
		name    string
		sagaN   string
		version int
		steps   []saga.Step[data]
		want    string
	}{
		{"empty name", "", 1, []saga.Step[data]{ok}, "empty saga name"},
		{"NUL in name", "a\x00", 1, []saga.Step[data]{ok}, "non-printable"},
		{"space at end", "order ", 1, []saga.Step[data]{ok}, "space"},
		{"long name", strings.Repeat("n", 201), 1, []saga.Step[data]{ok}, "longer than 200"},
		{"bad UTF-8", "\xff", 1, []saga.Step[data]{ok}, "UTF-8"},
		{"version 0", "s", 0, []saga.Step[data]{ok}, "version must be at least 1"},
		{"no steps", "s", 1, nil, "no steps"},
		{"duplicate", "s", 1, []saga.Step[data]{ok, ok}, "used twice"},
		{"unnamed step", "s", 1, []saga.Step[data]{{Command: cmd("t")}}, "empty step name"},
		{"no action", "s", 1, []saga.Step[data]{{Name: "a"}}, "exactly one of Action and Command"},
		{"both actions", "s", 1, []saga.Step[data]{{Name: "a", Action: local, Command: cmd("t")}}, "exactly one"},
		{"two compensations", "s", 1, []saga.Step[data]{{Name: "a", Command: cmd("t"), Compensation: local,
			CompensationCommand: cmd("t")}}, "at most one of Compensation"},
		{"OnReply on a local step", "s", 1, []saga.Step[data]{{Name: "a", Action: local,
			OnReply: func(context.Context, *data, saga.Reply) error { return nil }}}, "OnReply needs a Command"},
		{"compensatable after pivot", "s", 1, []saga.Step[data]{{Name: "p", Kind: saga.Pivot, Command: cmd("t")},
			{Name: "c", Command: cmd("t")}}, "comes after the pivot"},
		{"two pivots", "s", 1, []saga.Step[data]{{Name: "p", Kind: saga.Pivot, Command: cmd("t")},
			{Name: "q", Kind: saga.Pivot, Command: cmd("t")}}, "second pivot"},
		{"pivot after retriable", "s", 1, []saga.Step[data]{{Name: "r", Kind: saga.Retriable, Command: cmd("t")},
			{Name: "p", Kind: saga.Pivot, Command: cmd("t")}}, "pivot \"p\" comes after a retriable step"},
		{"pivot with compensation", "s", 1, []saga.Step[data]{{Name: "p", Kind: saga.Pivot, Command: cmd("t"),
			CompensationCommand: cmd("t")}}, "cannot have a compensation"},
		{"retriable with compensation", "s", 1, []saga.Step[data]{{Name: "r", Kind: saga.Retriable, Action: local,
			Compensation: local}}, "cannot have a compensation"},
		{"unknown kind", "s", 1, []saga.Step[data]{{Name: "a", Kind: 7, Command: cmd("t")}}, "unknown kind"},
		{"bad backoff", "s", 1, []saga.Step[data]{{Name: "a", Command: cmd("t"),
			Retry: saga.Retry{Backoff: broker.Backoff{Multiplier: 0.5}}}}, "Multiplier"},
		{"bad compensation backoff", "s", 1, []saga.Step[data]{{Name: "a", Command: cmd("t"),
			CompensationRetry: saga.Retry{Backoff: broker.Backoff{Initial: -1}}}}, "CompensationRetry"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := saga.Define(c.sagaN, c.version, c.steps...)
			if !errors.Is(err, saga.ErrInvalidDefinition) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v; want ErrInvalidDefinition mentioning %q", err, c.want)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "saga: ") {
				t.Errorf("error %q does not start with the package path", err)
			}
		})
	}
}

func TestDefinitionDefaults(t *testing.T) {
	def, err := saga.Define("order", 3,
		saga.Step[data]{Name: "validate", Action: local},
		saga.Step[data]{Name: "reserve", Command: cmd("inv"), CompensationCommand: cmd("inv")},
		saga.Step[data]{Name: "charge", Kind: saga.Pivot, Command: cmd("pay"), Timeout: -1},
		saga.Step[data]{Name: "ship", Kind: saga.Retriable, Command: cmd("ship"), Timeout: time.Minute,
			Retry: saga.Retry{MaxAttempts: -1}})
	if err != nil {
		t.Fatal(err)
	}
	want := []saga.StepInfo{
		{Name: "validate", Kind: saga.Compensatable, Local: true, Timeout: saga.DefaultStepTimeout, MaxAttempts: saga.DefaultStepAttempts},
		{Name: "reserve", Kind: saga.Compensatable, Compensation: "command", Timeout: saga.DefaultStepTimeout, MaxAttempts: saga.DefaultStepAttempts},
		{Name: "charge", Kind: saga.Pivot, Timeout: 0, MaxAttempts: saga.DefaultStepAttempts},
		{Name: "ship", Kind: saga.Retriable, Timeout: time.Minute, MaxAttempts: -1},
	}
	got := def.Steps()
	if len(got) != len(want) {
		t.Fatalf("steps %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("step %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if def.Name() != "order" || def.Version() != 3 || def.Deadline() != 0 {
		t.Errorf("name %q version %d deadline %v", def.Name(), def.Version(), def.Deadline())
	}
	d2 := def.WithDeadline(time.Hour)
	if d2.Deadline() != time.Hour || def.Deadline() != 0 {
		t.Errorf("WithDeadline changed the original or did not apply")
	}
	if def.WithDeadline(-time.Second).Deadline() != 0 {
		t.Errorf("a negative deadline is not none")
	}
	for k, s := range map[saga.Kind]string{saga.Compensatable: "compensatable", saga.Pivot: "pivot", saga.Retriable: "retriable", 9: "Kind(9)"} {
		if k.String() != s {
			t.Errorf("%d.String() = %q", int(k), k.String())
		}
	}
}

func TestRefuse(t *testing.T) {
	if saga.Refuse(nil) != nil {
		t.Error("Refuse(nil) != nil")
	}
	base := errors.New("card declined")
	err := saga.Refuse(base)
	if !errors.Is(err, saga.ErrRefused) || !errors.Is(err, base) || err.Error() != "card declined" {
		t.Errorf("Refuse: %v", err)
	}
	if saga.Refuse(err) != err {
		t.Error("Refuse of a refusal wraps again")
	}
	if e := saga.Refusef("no %s", "stock"); !errors.Is(e, saga.ErrRefused) || e.Error() != "no stock" {
		t.Errorf("Refusef: %v", e)
	}
}

func TestStatus(t *testing.T) {
	for s, fin := range map[saga.Status]bool{saga.StatusRunning: false, saga.StatusCompensating: false, saga.StatusParked: false,
		saga.StatusCompleted: true, saga.StatusCompensated: true, saga.StatusAborted: true} {
		if s.Finished() != fin || !s.Valid() {
			t.Errorf("%s: finished %v valid %v", s, s.Finished(), s.Valid())
		}
	}
	if saga.Status("lost").Valid() {
		t.Error("unknown status valid")
	}
}
