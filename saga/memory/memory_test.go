package memory_test

import (
	"log/slog"
	"testing"

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
