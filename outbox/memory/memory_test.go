package memory_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/memory"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
)

func harness(t *testing.T) outboxtest.Harness {
	s, err := memory.New(memory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return outboxtest.Harness{
		Store:   s,
		Enqueue: s.Enqueue,
		Begin: func(ctx context.Context) (outboxtest.Tx, error) {
			return s.Begin(ctx)
		},
		Open: func(t *testing.T) outbox.Store { return s.Open() },
		Crash: func(_ context.Context, victim outbox.Store) error {
			m, ok := victim.(*memory.Store)
			if !ok {
				return fmt.Errorf("not a memory store: %T", victim)
			}
			m.Crash()
			return nil
		},
		Corrupt: func(_ context.Context, kind outboxtest.Corruption, key string) error {
			return s.Corrupt(key, kind == outboxtest.EmptyTopic)
		},
	}
}

// TestConformance runs the outbox suite: the store cases and the relay
// cases on the memory broker, with an idempotent consumer in the crash
// case.
func TestConformance(t *testing.T) {
	outboxtest.Run(t, harness, outboxtest.Options{
		Messages: 3000,
		Effects:  effects,
	})
}

// effects is an idempotent consumer on the memory idempotency store: the
// effect counts applications per message ID.
func effects(t *testing.T) (broker.Handler, func(context.Context) (map[string]int, error)) {
	store, err := idemmem.New(idemmem.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mw, err := idempotency.Consumer(store, idempotency.ConsumerConfig{Consumer: "effects"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	applied := map[string]int{}
	h := mw(func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		applied[d.ID]++
		mu.Unlock()
		return nil
	})
	return h, func(context.Context) (map[string]int, error) {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]int, len(applied))
		for k, v := range applied {
			out[k] = v
		}
		return out, nil
	}
}

// TestTx: rows of a transaction get their IDs when written and appear at
// commit; a rolled-back or refused batch writes nothing; a finished
// transaction refuses more work with ErrTxDone.
func TestTx(t *testing.T) {
	ctx := context.Background()
	s, _ := memory.New(memory.Config{})
	err := s.BeginFunc(ctx, func(tx *memory.Tx) error {
		if err := tx.Enqueue(ctx, broker.NewMessage("t", []byte("a"))); err != nil {
			return err
		}
		return errors.New("business rule broken")
	})
	if err == nil || err.Error() != "business rule broken" {
		t.Fatalf("BeginFunc = %v, want the function's error", err)
	}
	if st, _ := s.Stats(ctx); st.Pending != 0 {
		t.Fatalf("a rolled-back BeginFunc left %d pending rows", st.Pending)
	}
	tx, _ := s.Begin(ctx)
	if err := tx.Enqueue(ctx, broker.NewMessage("t", []byte("ok")), broker.Message{}); !errors.Is(err, broker.ErrEmptyTopic) {
		t.Fatalf("enqueue of a message without topic: %v, want ErrEmptyTopic", err)
	}
	if err := tx.Enqueue(ctx, broker.NewMessage("t", []byte("b"))); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); !errors.Is(err, memory.ErrTxDone) {
		t.Errorf("rollback after commit: %v, want ErrTxDone", err)
	}
	if err := tx.Enqueue(ctx, broker.NewMessage("t", nil)); !errors.Is(err, memory.ErrTxDone) {
		t.Errorf("enqueue after commit: %v, want ErrTxDone", err)
	}
	c, err := s.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if recs := c.Records(); len(recs) != 1 || string(recs[0].Message.Payload) != "b" {
		t.Fatalf("claimed %v, want only b (the refused batch wrote nothing)", recs)
	}
	// What a claim returns is a copy: changing it changes nothing stored.
	c.Records()[0].Message.Payload[0] = 'x'
	_ = c.Release(ctx)
	c, _ = s.Claim(ctx, outbox.ClaimRequest{Limit: 10})
	if p := string(c.Records()[0].Message.Payload); p != "b" {
		t.Errorf("stored payload changed to %q through a claimed record", p)
	}
	if err := c.Complete(ctx, outbox.Outcome{Published: []int64{c.Records()[0].ID}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Complete(ctx, outbox.Outcome{}); !errors.Is(err, memory.ErrClaimDone) {
		t.Errorf("second Complete: %v, want ErrClaimDone", err)
	}
	if _, err := memory.New(memory.Config{MaxMessageBytes: -1}); !errors.Is(err, memory.ErrInvalidConfig) {
		t.Errorf("New with a negative limit: %v, want ErrInvalidConfig", err)
	}
	if _, err := s.Claim(ctx, outbox.ClaimRequest{}); err == nil {
		t.Errorf("Claim with limit 0 succeeded")
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Enqueue(cancelled, broker.NewMessage("t", nil)); !errors.Is(err, context.Canceled) {
		t.Errorf("enqueue with a cancelled context: %v", err)
	}
}
