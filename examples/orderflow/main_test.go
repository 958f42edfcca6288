package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/examples/testkit"
)

// checkDemo runs the demo and checks where the orders ended.
func checkDemo(t *testing.T, opts Options, backends string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := runDemo(ctx, &out, opts, true); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"orderflow on " + backends,
		"order 1 (ada, 50): shipped",
		"order 2 (bob, 5000): cancelled: payment refused: card declined for 5000",
		"POST /orders (server",
		"        saga.step reserve (producer",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

// TestDemo runs the example as `go run ./examples/orderflow` does: one
// process, memory broker, memory stores.
func TestDemo(t *testing.T) {
	t.Parallel()
	checkDemo(t, Options{}, "memory broker, memory stores")
}

// TestDemoBackends runs it on PostgreSQL and a Kafka-protocol broker from
// examples/testkit: the STEADFAST_* variables under `make test`, containers
// when a Docker engine answers, an in-process Kafka otherwise. Copy this
// test to test your own services the same way.
func TestDemoBackends(t *testing.T) {
	t.Parallel()
	pg := testkit.Postgres(t)
	seeds := testkit.KafkaSeeds(t)
	opts := Options{PostgresURL: pg.URL, KafkaBrokers: seeds, Prefix: testkit.Name(t, "of") + "."}
	checkDemo(t, opts, "Kafka, PostgreSQL")
	// Again, on the same tables and topics (a restarted system).
	checkDemo(t, opts, "Kafka, PostgreSQL")
}

// TestSeparateServices runs each service as its own System, as separate
// processes would, sharing only PostgreSQL and Kafka.
func TestSeparateServices(t *testing.T) {
	t.Parallel()
	pg := testkit.Postgres(t)
	seeds := testkit.KafkaSeeds(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prefix := testkit.Name(t, "of") + "."
	var orders *System
	for _, svc := range [][]string{{"orders"}, {"orchestrator"}, {"inventory", "payment"}, {"shipping"}, {"projection"}} {
		sys, err := Start(ctx, Options{Services: svc, PostgresURL: pg.URL, KafkaBrokers: seeds, Prefix: prefix})
		if err != nil {
			t.Fatalf("start %v: %v", svc, err)
		}
		t.Cleanup(sys.Close)
		if svc[0] == "orders" {
			orders = sys
		}
	}
	base := serve(t, orders, nil)
	for _, o := range []Order{{ID: "o-1", Customer: "ada", Amount: 10}, {ID: "o-2", Customer: "bob", Amount: 2000}} {
		if err := post(ctx, base, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := post(ctx, base, Order{ID: "o-1", Customer: "ada", Amount: 10}); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("placing o-1 again: %v, want 409 Conflict", err)
	}
	for id, want := range map[string]string{"o-1": "shipped", "o-2": "cancelled: payment refused: card declined for 2000"} {
		v, err := waitFinal(ctx, base, id, orders)
		if err != nil {
			t.Fatal(err)
		}
		if v.Status != want {
			t.Errorf("%s: %q, want %q", id, v.Status, want)
		}
	}
	if _, err := Start(ctx, Options{Services: []string{"orders"}, KafkaBrokers: seeds}); err == nil {
		t.Errorf("a single service on memory stores started; want an error (memory stores live in one process)")
	}
}

// serve runs the orders service's HTTP API until the test ends.
func serve(t *testing.T, sys *System, tp trace.TracerProvider) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: sys.Orders().Handler(tp), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// TestHTTPBadInput: malformed orders are refused with 400 and write nothing.
func TestHTTPBadInput(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sys, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	base := serve(t, sys, nil)
	for _, body := range []string{``, `{`, `{"id":"","amount":5}`, `{"id":"a/b","amount":5}`, `{"id":"x","amount":-1}`, `[1,2]`} {
		resp, err := http.Post(base+"/orders", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST %q: %s, want 400", body, resp.Status)
		}
	}
	resp, err := http.Get(base + "/orders/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET of an order never placed: %s, want 404", resp.Status)
	}
}

// TestOneTrace: an order is one trace from the HTTP request to the
// projection, each hop the child of the one before, on the memory broker
// and on Kafka (kfake, or the configured cluster).
func TestOneTrace(t *testing.T) {
	t.Parallel()
	t.Run("Memory", func(t *testing.T) {
		t.Parallel()
		checkTrace(t, Options{})
	})
	t.Run("Kafka", func(t *testing.T) {
		t.Parallel()
		checkTrace(t, Options{KafkaBrokers: testkit.KafkaSeeds(t), Prefix: testkit.Name(t, "of") + "."})
	})
	// On PostgreSQL every command and reply leaves through the outbox too:
	// the relay's publish span sits between each sender and its consumer.
	t.Run("KafkaPostgres", func(t *testing.T) {
		t.Parallel()
		checkTrace(t, Options{KafkaBrokers: testkit.KafkaSeeds(t), PostgresURL: testkit.Postgres(t).URL,
			Prefix: testkit.Name(t, "of") + "."})
	})
}

func checkTrace(t *testing.T, opts Options) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tp, spans := NewTracing()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	opts.TracerProvider = tp
	sys, err := Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	base := serve(t, sys, tp)
	if err := post(ctx, base, Order{ID: "o-1", Customer: "ada", Amount: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitFinal(ctx, base, "o-1", sys); err != nil {
		t.Fatal(err)
	}
	root, ok := rootSpan(spans, "o-1")
	if !ok {
		t.Fatal("no POST /orders span")
	}
	id := root.SpanContext().TraceID()
	projectionGroup := opts.topic("projection")
	// Wait until the projection handled the order event and the three
	// replies (its spans end after the view changed).
	var proj []sdktrace.ReadOnlySpan
	deadline := time.Now().Add(time.Minute)
	for {
		proj = nil
		for _, s := range spans.Trace(id) {
			if g := attr(s, "messaging.consumer.group.name"); g == projectionGroup || g == projectionGroup+"-replies" {
				proj = append(proj, s)
			}
		}
		if len(proj) >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var buf bytes.Buffer
	spans.Print(&buf, id)
	tree := buf.String()
	if len(proj) < 4 {
		t.Fatalf("the projection's process spans in the trace: %d, want 4 (order event and three replies):\n%s", len(proj), tree)
	}
	all := spans.Trace(id)
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range all {
		byID[s.SpanContext().SpanID()] = s
	}
	for _, s := range all {
		if s != root && byID[s.Parent().SpanID()] == nil {
			t.Errorf("span %q has a parent outside the recorded trace", s.Name())
		}
	}
	// The projection's span of the last reply, up to the request.
	var last sdktrace.ReadOnlySpan
	for _, s := range proj {
		p := byID[s.Parent().SpanID()]
		if p != nil && p.Name() == "publish "+opts.Prefix+"saga.replies" {
			p = byID[p.Parent().SpanID()]
		}
		if p != nil && p.Name() == "saga.participant ship" {
			last = s
		}
	}
	if last == nil {
		t.Fatalf("no projection span under the shipping participant:\n%s", tree)
	}
	var chain []string
	for s := last; s != nil; s = byID[s.Parent().SpanID()] {
		chain = append(chain, s.Name())
	}
	p := opts.Prefix
	// hop is a message's way from its sender to a consumer: the broker's
	// process span, below the relay's publish span when it went through
	// the PostgreSQL outbox (the memory saga stores publish directly).
	hop := func(topic string) []string {
		if opts.PostgresURL != "" {
			return []string{"process " + p + topic, "publish " + p + topic}
		}
		return []string{"process " + p + topic}
	}
	var want []string
	add := func(names ...string) { want = append(want, names...) }
	add(hop("saga.replies")...) // the projection's
	add("saga.participant ship")
	add(hop("shipping")...)
	add("saga.step ship", "saga.reply charge")
	add(hop("saga.replies")...)
	add("saga.participant charge")
	add(hop("payment")...)
	add("saga.step charge", "saga.reply reserve")
	add(hop("saga.replies")...)
	add("saga.participant reserve")
	add(hop("inventory")...)
	add("saga.step reserve", "saga.start order", "process "+p+"orders", "publish "+p+"orders", "POST /orders")
	if fmt.Sprint(chain) != fmt.Sprint(want) {
		t.Errorf("chain from the projection to the request:\n got %q\nwant %q\ntrace:\n%s", chain, want, tree)
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("trace:\n%s", tree)
	}
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if a.Key == attribute.Key(key) {
			return a.Value.Emit()
		}
	}
	return ""
}
