// Command outbox shows the transactional outbox: orders and their events
// commit in one transaction, a relay publishes the events (to the in-process
// memory broker, standing in for Kafka or RabbitMQ), and a consumer receives
// them at least once, in per-order order. It also shows a rolled-back order
// producing no event, a transaction that commits late still being published,
// and a row the relay cannot publish being parked.
//
// With no infrastructure it keeps the orders and the outbox in memory
// (outbox/memory):
//
//	go run ./examples/outbox
//
// With STEADFAST_POSTGRES_URL set it uses PostgreSQL (outbox/postgres), where
// the order row and its events commit in one database transaction (it creates
// example_orders and example_outbox):
//
//	make services && . .services/env && go run ./examples/outbox
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/outbox"
)

const envURL = "STEADFAST_POSTGRES_URL"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout, os.Getenv(envURL)); err != nil {
		log.Fatal(err)
	}
}

// run runs the example on PostgreSQL at url, or in memory when url is "".
func run(ctx context.Context, out io.Writer, url string) error {
	db, err := openDB(ctx, url)
	if err != nil {
		return err
	}
	defer db.close()
	store := db.store
	fmt.Fprintf(out, "orders and outbox in %s\n", db.name)

	run := broker.NewID()[24:] // keeps reruns apart
	topic := "orders." + run
	// The broker's size limit (4 KiB here, to show a parked row) is the one
	// setting: the relay asks its publisher for it.
	b := brokermem.New(brokermem.Config{MaxMessageBytes: 4 << 10})
	defer b.Close()

	// The consumer: prints each event, checks per-order order.
	var (
		mu       sync.Mutex
		received []string
		byOrder  = map[string][]string{}
	)
	subCtx, stopSub := context.WithCancel(ctx)
	defer stopSub()
	subDone := make(chan error, 1)
	go func() {
		subDone <- b.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: "shipping"},
			func(_ context.Context, d broker.Delivery) error {
				mu.Lock()
				defer mu.Unlock()
				received = append(received, d.Header(broker.HeaderType))
				byOrder[d.Key] = append(byOrder[d.Key], d.Header(broker.HeaderType))
				return nil
			})
	}()

	// The relay.
	relay, err := outbox.NewRelay(store, b, outbox.Config{
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	relayCtx, stopRelay := context.WithCancel(ctx)
	defer stopRelay()
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()

	event := func(order, typ string, payload []byte) broker.Message {
		m := broker.NewMessage(topic, payload)
		m.Key = order
		m.Headers = map[string]string{broker.HeaderType: typ}
		return m
	}
	// placeOrder writes an order and its events in one transaction.
	placeOrder := func(tx orderTx, order, customer string, events ...broker.Message) error {
		return tx.place(ctx, order, customer, events...)
	}
	order := func(n int) string { return fmt.Sprintf("order-%d-%s", n, run) }

	// 1. An order and three events in one transaction: they arrive in order.
	o1 := order(1)
	if err := db.inTx(ctx, func(tx orderTx) error {
		return placeOrder(tx, o1, "alice", event(o1, "created", nil), event(o1, "paid", nil), event(o1, "shipped", nil))
	}); err != nil {
		return err
	}
	fmt.Fprintln(out, "order 1: created, paid, shipped committed in one transaction")

	// 2. A transaction that rolls back: no order, no event.
	o2 := order(2)
	errDeclined := errors.New("card declined")
	err = db.inTx(ctx, func(tx orderTx) error {
		if err := placeOrder(tx, o2, "bob", event(o2, "created", nil)); err != nil {
			return err
		}
		return errDeclined
	})
	if !errors.Is(err, errDeclined) {
		return fmt.Errorf("order 2: %v", err)
	}
	fmt.Fprintln(out, "order 2: rolled back (card declined), so its event never exists")

	// 3. A late commit: order 3's transaction writes its event first but
	// commits after order 4's. It is published anyway.
	o3, o4 := order(3), order(4)
	late, err := db.begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = late.rollback(context.Background()) }()
	if err := placeOrder(late, o3, "carol", event(o3, "created", nil)); err != nil {
		return err
	}
	if err := db.inTx(ctx, func(tx orderTx) error {
		return placeOrder(tx, o4, "dave", event(o4, "created", nil))
	}); err != nil {
		return err
	}
	if err := waitFor(ctx, func() bool { mu.Lock(); defer mu.Unlock(); return len(byOrder[o4]) == 1 }); err != nil {
		return fmt.Errorf("order 4: %w", err)
	}
	if err := late.commit(ctx); err != nil {
		return err
	}
	fmt.Fprintln(out, "order 3: its transaction began first and committed after order 4's, and is still published")

	// 4. An event the broker cannot take (over its size limit) is parked,
	// and the order's next event still flows.
	o5 := order(5)
	if err := db.inTx(ctx, func(tx orderTx) error {
		return placeOrder(tx, o5, "erin", event(o5, "created", make([]byte, 8<<10)), event(o5, "cancelled", nil))
	}); err != nil {
		return err
	}

	want := map[string][]string{
		o1: {"created", "paid", "shipped"},
		o3: {"created"},
		o4: {"created"},
		o5: {"cancelled"},
	}
	if err := waitFor(ctx, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for o, evs := range want {
			if len(byOrder[o]) < len(evs) {
				return false
			}
		}
		return true
	}); err != nil {
		return fmt.Errorf("waiting for the events: %w", err)
	}
	var parked []outbox.Record
	if err := waitFor(ctx, func() bool {
		parked, err = store.Parked(ctx, outbox.ParkedQuery{})
		return err == nil && hasKey(parked, o5)
	}); err != nil {
		return fmt.Errorf("waiting for the parked row: %w", err)
	}
	for _, p := range parked {
		if p.Message.Key != o5 {
			continue // from an earlier run
		}
		fmt.Fprintf(out, "order 5: its %d KB %q event was parked: %s\n", len(p.Message.Payload)>>10,
			p.Message.Header(broker.HeaderType), strings.TrimPrefix(p.LastError, "outbox: invalid message: "))
		if _, err := store.Delete(ctx, p.ID); err != nil {
			return err
		}
	}

	stopRelay()
	if err := <-relayDone; err != nil {
		return err
	}
	stopSub()
	if err := <-subDone; err != nil {
		return err
	}

	mu.Lock()
	defer mu.Unlock()
	orders := make([]string, 0, len(byOrder))
	for o := range byOrder {
		orders = append(orders, o)
	}
	sort.Strings(orders)
	fmt.Fprintln(out, "the consumer received, per order:")
	for _, o := range orders {
		fmt.Fprintf(out, "  %s: %s\n", strings.TrimSuffix(o, "-"+run), strings.Join(byOrder[o], ", "))
	}
	for o, evs := range want {
		if strings.Join(byOrder[o], ",") != strings.Join(evs, ",") {
			return fmt.Errorf("%s: received %v, want %v", o, byOrder[o], evs)
		}
	}
	if len(byOrder[o2]) != 0 {
		return fmt.Errorf("received events of the rolled-back order: %v", byOrder[o2])
	}
	fmt.Fprintf(out, "%d events, each once and in order per order; nothing from the rolled-back order\n", len(received))
	return nil
}

func hasKey(recs []outbox.Record, key string) bool {
	for _, r := range recs {
		if r.Message.Key == key {
			return true
		}
	}
	return false
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}
