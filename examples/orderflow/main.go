// Command orderflow is a small multi-service system built from every
// steadfast pattern:
//
//   - orders: an HTTP API (POST /orders, GET /orders/{id}); an order and its
//     "order.placed" event commit together through the transactional outbox,
//     and an outbox relay publishes the event;
//   - orchestrator: an idempotent consumer of order events starts the
//     order saga (package saga): reserve inventory, charge the payment (the
//     pivot), ship; a refused payment releases the inventory;
//   - inventory, payment, shipping: saga participants, each acting once per
//     order however often a command is delivered (payment refuses amounts
//     over 1000);
//   - projection: an idempotent consumer of order events and saga replies
//     keeps a read model of orders, which GET /orders/{id} serves.
//
// One OpenTelemetry trace follows each order across every hop: the HTTP
// request, the outbox, the relay's publish, the broker, the consumers, the
// saga's steps, the participants, their replies and the projection.
//
// With no flags it runs everything in one process on the memory broker and
// memory stores, places two orders through the HTTP API, prints where they
// ended and the trace of the first one:
//
//	go run ./examples/orderflow
//
// On real backends (STEADFAST_POSTGRES_URL for orders, outbox, sagas,
// idempotency keys and the read model; STEADFAST_KAFKA_BROKERS for the
// broker) the same demo runs with them, and each service can run as its
// own process:
//
//	go run ./examples/orderflow -serve -service orders -addr :8080
//	go run ./examples/orderflow -serve -service orchestrator
//	go run ./examples/orderflow -serve -service inventory,payment,shipping
//	go run ./examples/orderflow -serve -service projection
//	curl -d '{"id":"o-1","customer":"ada","amount":50}' localhost:8080/orders
//	curl localhost:8080/orders/o-1
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/broker/kafka"
)

func main() {
	var (
		svc   = flag.String("service", "all", "services to run, comma separated: all or "+strings.Join(services, ","))
		serve = flag.Bool("serve", false, "keep serving (the orders service's HTTP API on -addr) instead of running the demo")
		addr  = flag.String("addr", "127.0.0.1:8080", "HTTP address of the orders service with -serve")
		quiet = flag.Bool("quiet", false, "do not print the demo order's trace")
	)
	flag.Parse()
	opts := Options{
		PostgresURL:  os.Getenv("STEADFAST_POSTGRES_URL"),
		KafkaBrokers: kafka.ParseBrokers(os.Getenv("STEADFAST_KAFKA_BROKERS")),
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if *svc != "all" {
		opts.Services = strings.Split(*svc, ",")
		for _, s := range opts.Services {
			if !contains(services, s) {
				log.Fatalf("unknown service %q; want all or some of %s", s, strings.Join(services, ","))
			}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if *serve {
		err = runServe(ctx, opts, *addr)
	} else {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		err = runDemo(ctx, os.Stdout, opts, !*quiet)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runServe runs the selected services until ctx ends.
func runServe(ctx context.Context, opts Options, addr string) error {
	sys, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer sys.Close()
	if opts.runs("orders") {
		srv := &http.Server{Addr: addr, Handler: sys.Orders().Handler(opts.TracerProvider), ReadHeaderTimeout: 10 * time.Second}
		go func() { <-ctx.Done(); _ = srv.Close() }()
		log.Printf("orders service on http://%s", addr)
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-sys.Err():
		return err
	}
}

// demoOrders are the demo's orders: one goes through, one is refused by
// the payment service.
var demoOrders = []Order{{Customer: "ada", Amount: 50}, {Customer: "bob", Amount: 5000}}

// runDemo starts every service, places the demo orders through the HTTP
// API, waits for the read model to show where each ended, and prints that
// (and, with printTrace, the first order's trace).
func runDemo(ctx context.Context, out io.Writer, opts Options, printTrace bool) error {
	tp, spans := NewTracing()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	if opts.TracerProvider == nil {
		opts.TracerProvider = tp
	}
	opts.Services = nil
	sys, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer sys.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sys.Orders().Handler(opts.TracerProvider), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()

	backends := "memory broker, memory stores"
	switch {
	case opts.PostgresURL != "" && len(opts.KafkaBrokers) > 0:
		backends = "Kafka, PostgreSQL"
	case opts.PostgresURL != "":
		backends = "memory broker, PostgreSQL"
	case len(opts.KafkaBrokers) > 0:
		backends = "Kafka, memory stores"
	}
	fmt.Fprintf(out, "orderflow on %s\n", backends)
	run := fmt.Sprintf("%x", time.Now().UnixNano()) // order IDs unique to this run
	ids := make([]string, len(demoOrders))
	for i, o := range demoOrders {
		o.ID = fmt.Sprintf("order-%d-%s", i+1, run)
		ids[i] = o.ID
		if err := post(ctx, base, o); err != nil {
			return err
		}
	}
	for i, id := range ids {
		v, err := waitFinal(ctx, base, id, sys)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "order %d (%s, %d): %s\n", i+1, demoOrders[i].Customer, demoOrders[i].Amount, v.Status)
	}
	if printTrace {
		root, ok := rootSpan(spans, ids[0])
		if !ok {
			return errors.New("orderflow: no trace recorded for the first order")
		}
		// The projection's last span ends just after the view changed.
		time.Sleep(100 * time.Millisecond)
		fmt.Fprintf(out, "trace %s of order 1:\n", root.SpanContext().TraceID())
		spans.Print(out, root.SpanContext().TraceID())
	}
	return nil
}
