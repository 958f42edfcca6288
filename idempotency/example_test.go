package idempotency_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/steadfast-go/steadfast/broker"
	brokermem "github.com/steadfast-go/steadfast/broker/memory"
	"github.com/steadfast-go/steadfast/idempotency"
	idemmem "github.com/steadfast-go/steadfast/idempotency/memory"
)

// A consumer that receives the same message three times (the producer
// retried) bills it once.
func ExampleConsumer() {
	b := brokermem.New(brokermem.Config{})
	defer b.Close()
	store, _ := idemmem.New(idemmem.Config{})
	dedup, err := idempotency.Consumer(store, idempotency.ConsumerConfig{})
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := broker.NewMessage("orders", []byte("order-1"))
	m.Key = "customer-7"
	for range 3 {
		_ = b.Publish(ctx, m) // same ID each time
	}

	deliveries := 0
	count := func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			if deliveries++; deliveries == 3 {
				defer cancel()
			}
			return next(ctx, d)
		}
	}
	bill := func(_ context.Context, d broker.Delivery) error {
		fmt.Printf("billing %s\n", d.Payload)
		return nil
	}
	_ = b.Subscribe(ctx, broker.Subscription{Topic: "orders", Group: "billing"}, broker.Chain(bill, count, dedup))
	fmt.Println("deliveries:", deliveries, "pending:", b.Pending("orders", "billing"))
	// Output:
	// billing order-1
	// deliveries: 3 pending: 0
}

// An endpoint behind the Idempotency-Key middleware: the retry gets the
// stored response; reusing the key for another request is refused.
func ExampleHTTP() {
	store, _ := idemmem.New(idemmem.Config{})
	mw, err := idempotency.HTTP(store, idempotency.HTTPConfig{Required: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	orders := 0
	srv := httptest.NewServer(mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		orders++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, "order %d", orders)
	})))
	defer srv.Close()

	post := func(key, body string) {
		req, _ := http.NewRequest("POST", srv.URL+"/orders", strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 400 { // an application/problem+json body says why
			fmt.Println(resp.StatusCode)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		fmt.Printf("%d %s (replayed: %t)\n", resp.StatusCode, b, resp.Header.Get("Idempotent-Replayed") == "true")
	}
	post("a1", "2 books") // runs
	post("a1", "2 books") // replayed
	post("a1", "3 books") // same key, different request
	post("", "2 books")   // no key on a route that requires one
	// Output:
	// 201 order 1 (replayed: false)
	// 201 order 1 (replayed: true)
	// 422
	// 400
}
