package cqrs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/cqrs"
	"github.com/steadfast-go/steadfast/eventsource"
	esmemory "github.com/steadfast-go/steadfast/eventsource/memory"
)

type Deposit struct {
	Account string
	Amount  int64
}

func (d Deposit) Validate() error {
	if d.Amount <= 0 {
		return errors.New("amount must be positive")
	}
	return nil
}

type Balance struct{ Account string }

type Deposited struct{ Amount int64 }

type Unknown struct{}

func newBus(t testing.TB) *cqrs.Bus {
	t.Helper()
	store := esmemory.New()
	reg := eventsource.NewRegistry()
	eventsource.Register[Deposited](reg, "account.deposited", 1)
	repo, err := eventsource.NewRepository(store, reg, eventsource.Decider[int64, Deposit, any]{
		Decide: func(_ int64, d Deposit) ([]any, error) { return []any{Deposited{d.Amount}}, nil },
		Evolve: func(s int64, e any) int64 { return s + e.(Deposited).Amount },
	}, eventsource.RepositoryConfig[int64]{})
	if err != nil {
		t.Fatal(err)
	}
	bus := cqrs.NewBus(cqrs.Validate(), cqrs.Logging(discard), cqrs.Tracing(nil))
	if err := cqrs.HandleCommand(bus, "account.deposit", cqrs.DeciderHandler(repo, func(d Deposit) string { return "account-" + d.Account })); err != nil {
		t.Fatal(err)
	}
	if err := cqrs.HandleQuery(bus, "account.balance", func(ctx context.Context, q Balance) (int64, error) {
		l, err := repo.Load(ctx, "account-"+q.Account)
		return l.State, err
	}); err != nil {
		t.Fatal(err)
	}
	return bus
}

func TestBusInProcess(t *testing.T) {
	ctx := context.Background()
	bus := newBus(t)
	res, err := cqrs.Send(ctx, bus, Deposit{Account: "7", Amount: 30})
	if err != nil || res.Position.IsZero() || res.StreamID != "account-7" || res.Version != 1 {
		t.Fatalf("Send: %+v, %v", res, err)
	}
	if _, err := cqrs.Send(ctx, bus, Deposit{Account: "7", Amount: 12}); err != nil {
		t.Fatal(err)
	}
	bal, err := cqrs.Ask[Balance, int64](ctx, bus, Balance{Account: "7"})
	if err != nil || bal != 42 {
		t.Fatalf("Ask: %d, %v; want 42", bal, err)
	}
	if _, err := cqrs.Send(ctx, bus, Deposit{Account: "7", Amount: -1}); !errors.Is(err, cqrs.ErrValidation) {
		t.Fatalf("invalid command: %v, want ErrValidation", err)
	}
	if _, err := cqrs.Send(ctx, bus, Unknown{}); !errors.Is(err, cqrs.ErrUnregistered) {
		t.Fatalf("unregistered command: %v, want ErrUnregistered", err)
	}
	if _, err := cqrs.Ask[Unknown, int](ctx, bus, Unknown{}); !errors.Is(err, cqrs.ErrUnregistered) {
		t.Fatalf("unregistered query: %v, want ErrUnregistered", err)
	}
	// A query type sent as a command is not registered as one.
	if _, err := cqrs.Send(ctx, bus, Balance{}); !errors.Is(err, cqrs.ErrUnregistered) {
		t.Fatalf("query sent as a command: %v, want ErrUnregistered", err)
	}
	if _, err := cqrs.Ask[Balance, string](ctx, bus, Balance{Account: "7"}); !errors.Is(err, cqrs.ErrInvalidMessage) {
		t.Fatalf("wrong result type: %v, want ErrInvalidMessage", err)
	}
	if err := cqrs.HandleQuery(bus, "other.name", func(context.Context, Balance) (int, error) { return 0, nil }); !errors.Is(err, cqrs.ErrDuplicateHandler) {
		t.Fatalf("second handler for a type: %v, want ErrDuplicateHandler", err)
	}
	if err := cqrs.HandleQuery(bus, "account.balance", func(context.Context, Unknown) (int, error) { return 0, nil }); !errors.Is(err, cqrs.ErrDuplicateHandler) {
		t.Fatalf("second handler for a name: %v, want ErrDuplicateHandler", err)
	}
}

func TestBusOverBroker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mb := memory.New(memory.Config{RedeliveryBackoff: broker.ConstantBackoff(time.Millisecond)})
	bus := newBus(t)
	go func() {
		_ = mb.Subscribe(ctx, broker.Subscription{Topic: "accounts", Group: "accounts"}, bus.Handler(mb))
	}()
	client, err := cqrs.NewClient(mb, mb, cqrs.ClientConfig{ReplyTopic: "replies-1", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = client.Run(ctx) }()
	res, err := cqrs.Call[cqrs.Result](ctx, client, "accounts", "account-9", cqrs.KindCommand, "account.deposit", Deposit{Account: "9", Amount: 5})
	if err != nil || res.Position.IsZero() || res.Version != 1 {
		t.Fatalf("remote command: %+v, %v", res, err)
	}
	if err := client.Post(ctx, "accounts", "account-9", "account.deposit", Deposit{Account: "9", Amount: 6}); err != nil {
		t.Fatal(err)
	}
	var bal int64
	for deadline := time.Now().Add(30 * time.Second); bal != 11 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if bal, err = cqrs.Call[int64](ctx, client, "accounts", "", cqrs.KindQuery, "account.balance", Balance{Account: "9"}); err != nil {
			t.Fatal(err)
		}
	}
	if bal != 11 {
		t.Fatalf("remote query: %d, want 11", bal)
	}
	_, err = cqrs.Call[int](ctx, client, "accounts", "", cqrs.KindQuery, "no.such.query", Balance{})
	if !errors.Is(err, cqrs.ErrRemote) || !errors.Is(err, cqrs.ErrUnregistered) {
		t.Fatalf("unregistered remote query: %v, want ErrRemote and ErrUnregistered", err)
	}
	_, err = cqrs.Call[cqrs.Result](ctx, client, "accounts", "", cqrs.KindCommand, "account.deposit", Deposit{Account: "9", Amount: -3})
	if !errors.Is(err, cqrs.ErrRemote) || !errors.Is(err, cqrs.ErrValidation) {
		t.Fatalf("invalid remote command: %v, want ErrRemote and ErrValidation", err)
	}
	// Hostile payload: not the command's JSON.
	err = mb.Publish(ctx, broker.Message{ID: broker.NewID(), Topic: "accounts", Payload: []byte("{{{"),
		Headers: map[string]string{cqrs.HeaderKind: "command", cqrs.HeaderName: "account.deposit", cqrs.HeaderReplyTo: "replies-1"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = cqrs.Call[cqrs.Result](ctx, client, "accounts", "", cqrs.KindCommand, "account.deposit", "not an object")
	if !errors.Is(err, cqrs.ErrRemote) || !errors.Is(err, cqrs.ErrInvalidMessage) {
		t.Fatalf("undecodable remote command: %v, want ErrRemote and ErrInvalidMessage", err)
	}
	slow, err := cqrs.NewClient(mb, mb, cqrs.ClientConfig{ReplyTopic: "replies-2", Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = slow.Run(ctx) }()
	_, err = cqrs.Call[int64](ctx, slow, "nobody-listens", "", cqrs.KindQuery, "account.balance", Balance{Account: "9"})
	if !errors.Is(err, cqrs.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request nobody serves: %v, want ErrTimeout", err)
	}
}

// BenchmarkDispatch is the in-process bus's overhead: Send through a bus
// with no middleware against calling the handler directly.
func BenchmarkDispatch(b *testing.B) {
	ctx := context.Background()
	h := func(_ context.Context, d Deposit) (cqrs.Result, error) {
		return cqrs.Result{Version: d.Amount}, nil
	}
	bus := cqrs.NewBus()
	if err := cqrs.HandleCommand(bus, "deposit", h); err != nil {
		b.Fatal(err)
	}
	b.Run("steadfast", func(b *testing.B) {
		for i := range b.N {
			if _, err := cqrs.Send(ctx, bus, Deposit{Account: "a", Amount: int64(i)}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		for i := range b.N {
			if _, err := h(ctx, Deposit{Account: "a", Amount: int64(i)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

var _ = fmt.Sprint
