// Command quickstart publishes a few order events and consumes them with two
// consumer groups through the broker interface. It needs no infrastructure:
// by default it runs on the in-process memory broker.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/memory"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// backend picks the broker: the memory broker unless the environment names a
// real one.
func backend(ctx context.Context, out io.Writer) (broker.Publisher, broker.Subscriber, func(), error) {
	b := memory.New(memory.Config{})
	fmt.Fprintln(out, "backend: memory (in-process)")
	return b, b, func() { b.Close() }, nil
}

func run(ctx context.Context, out io.Writer) error {
	pub, sub, closeBackend, err := backend(ctx, out)
	if err != nil {
		return err
	}
	defer closeBackend()

	id := broker.NewID()
	topic := "quickstart.orders." + id[len(id)-8:]
	orders := []struct{ customer, event string }{
		{"alice", "order-1 created"}, {"bob", "order-2 created"},
		{"alice", "order-1 paid"}, {"alice", "order-1 shipped"}, {"bob", "order-2 paid"},
	}
	var msgs []broker.Message
	for _, o := range orders {
		m := broker.NewMessage(topic, []byte(o.event))
		m.Key = o.customer // per-key order: alice's events arrive in this order
		m.Headers = map[string]string{broker.HeaderType: "order.event"}
		msgs = append(msgs, m)
	}
	if err := pub.Publish(ctx, msgs...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	fmt.Fprintf(out, "published %d events to %s\n", len(msgs), topic)

	var (
		mu      sync.Mutex
		lines   []string
		failed  bool
		pending sync.WaitGroup
	)
	groups := []string{"billing", "shipping"}
	pending.Add(len(groups) * len(msgs))
	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	errs := make(chan error, len(groups))
	for _, group := range groups {
		go func() {
			errs <- sub.Subscribe(subCtx, broker.Subscription{Topic: topic, Group: group},
				func(_ context.Context, d broker.Delivery) error {
					mu.Lock()
					defer mu.Unlock()
					// Fail billing's first attempt at bob's payment once to show
					// redelivery: the broker hands it back with attempt 2.
					if group == "billing" && strings.HasSuffix(string(d.Payload), "paid") && d.Key == "bob" && !failed {
						failed = true
						lines = append(lines, fmt.Sprintf("%-8s %-5s %-18s attempt %d -> error, will be redelivered", group, d.Key, d.Payload, d.Attempt))
						return errors.New("payment service unavailable")
					}
					lines = append(lines, fmt.Sprintf("%-8s %-5s %-18s attempt %d -> ok", group, d.Key, d.Payload, d.Attempt))
					pending.Done()
					return nil
				})
		}()
	}
	done := make(chan struct{})
	go func() { pending.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-errs:
		return fmt.Errorf("subscribe: %w", err)
	case <-ctx.Done():
		return fmt.Errorf("waiting for deliveries: %w", ctx.Err())
	}
	stop()
	for range groups {
		if err := <-errs; err != nil {
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	// Handlers of different keys and groups run in parallel; sort per group
	// and key to show that each key kept its order.
	sort.SliceStable(lines, func(i, j int) bool { return lines[i][:14] < lines[j][:14] })
	for _, l := range lines {
		fmt.Fprintln(out, l)
	}
	fmt.Fprintf(out, "every group received all %d events once, each customer's in order\n", len(msgs))
	return nil
}
