package memory_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	bmem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/saga"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga/memory"
	"github.com/steadfast-go/steadfast/saga/sagatest"
)

func stores(t *testing.T, pub broker.Publisher) sagatest.Stores {
	s, err := memory.New(memory.Config{Publisher: pub, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := memory.NewParticipants(memory.Config{Publisher: pub, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.Close()
		_ = p.Close()
	})
	return sagatest.Stores{Store: s, Participants: p, Flows: memory.NewFlows()}
}

func TestConformance(t *testing.T) {
	sagatest.Run(t, sagatest.Features{Orders: 1000}, stores, sagatest.MemoryBroker)
}

// TestRetention: a running engine deletes instances finished longer ago
// than Config.Retention, with their history, and keeps unfinished ones.
func TestRetention(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := bmem.New(bmem.Config{})
	defer b.Close()
	s, err := memory.New(memory.Config{Publisher: b})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	type d struct{}
	def, _ := saga.Define("r", 1,
		saga.Step[d]{Name: "a", Action: func(context.Context, saga.Tx, *d) error { return nil }},
		saga.Step[d]{Name: "b", Command: func(context.Context, *d) (broker.Message, error) { return broker.Message{Topic: "t"}, nil }})
	eng, _ := saga.NewEngine(s, saga.Config{Retention: time.Millisecond, CleanupInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	_ = eng.Register(def)
	for _, id := range []string{"done", "open"} {
		if _, err := saga.Start(ctx, eng, def, id, d{}); err != nil {
			t.Fatal(err)
		}
	}
	in, _ := s.Get(ctx, "done")
	if err := eng.HandleReply(ctx, broker.Delivery{Message: broker.Message{ID: "r-1", Headers: map[string]string{
		saga.HeaderSagaID: "done", saga.HeaderStep: "b", saga.HeaderAction: "do", saga.HeaderCommand: in.Awaiting,
		saga.HeaderOutcome: "success"}}}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = eng.Run(ctx) }()
	for {
		if _, err := s.Get(ctx, "done"); errors.Is(err, saga.ErrNotFound) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the finished instance was not deleted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.History(ctx, "done", 0, 0); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("history kept: %v", err)
	}
	if in, err := s.Get(ctx, "open"); err != nil || in.Status != saga.StatusRunning {
		t.Errorf("unfinished instance: %v %v", in.Status, err)
	}
}
