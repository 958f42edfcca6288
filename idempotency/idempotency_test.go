package idempotency_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/memory"
)

func newMemory(t *testing.T) *memory.Store {
	t.Helper()
	s, err := memory.New(memory.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestKeyFuncs(t *testing.T) {
	d := broker.Delivery{Message: broker.Message{ID: "id-1", Topic: "orders", Headers: map[string]string{"x-key": "biz-9"}}, Partition: 3, Offset: 42}
	for _, c := range []struct {
		name string
		f    idempotency.KeyFunc
		want string
	}{
		{"MessageID", idempotency.MessageID, "id-1"},
		{"KafkaOffset", idempotency.KafkaOffset, "orders:3:42"},
		{"Header", idempotency.Header("x-key"), "biz-9"},
	} {
		if got, err := c.f(d); err != nil || got != c.want {
			t.Errorf("%s = %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	none := broker.Delivery{Message: broker.Message{Topic: "orders"}, Partition: -1, Offset: -1}
	for name, f := range map[string]idempotency.KeyFunc{
		"MessageID": idempotency.MessageID, "KafkaOffset": idempotency.KafkaOffset, "Header": idempotency.Header("x-key"),
	} {
		if _, err := f(none); !errors.Is(err, idempotency.ErrNoKey) {
			t.Errorf("%s of a delivery without a key: %v, want ErrNoKey", name, err)
		}
	}
}

func TestKeyOf(t *testing.T) {
	d := broker.Delivery{Message: broker.Message{ID: "id-1"}, Group: "billing"}
	if scope, key, err := (idempotency.ConsumerConfig{}).KeyOf(d); scope != "billing" || key != "id-1" || err != nil {
		t.Errorf("default KeyOf = %q, %q, %v; want billing, id-1", scope, key, err)
	}
	if scope, _, _ := (idempotency.ConsumerConfig{Consumer: "invoices"}).KeyOf(d); scope != "invoices" {
		t.Errorf("KeyOf with Consumer = %q, want invoices", scope)
	}
	if _, _, err := (idempotency.ConsumerConfig{}).KeyOf(broker.Delivery{Message: broker.Message{ID: "x"}}); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Errorf("KeyOf without consumer or group = %v, want ErrInvalidKey", err)
	}
}

func TestCheckKey(t *testing.T) {
	if err := idempotency.CheckKey("s", strings.Repeat("k", idempotency.MaxKeyBytes)); err != nil {
		t.Errorf("longest key: %v", err)
	}
	for _, c := range [][2]string{{"", "k"}, {"s", ""}, {"s", "a\x00b"}, {"s\xff", "k"}, {strings.Repeat("s", idempotency.MaxScopeBytes+1), "k"}} {
		if err := idempotency.CheckKey(c[0], c[1]); !errors.Is(err, idempotency.ErrInvalidKey) {
			t.Errorf("CheckKey(%q, %q) = %v, want ErrInvalidKey", c[0], c[1], err)
		}
	}
}

// faultyStore wraps a store and fails the calls a test asks for.
type faultyStore struct {
	idempotency.Store
	acquireErr, completeErr, releaseErr error
	completes, releases                 int
}

func (f *faultyStore) Acquire(ctx context.Context, scope, key string, fp []byte) (idempotency.Lease, *idempotency.Record, error) {
	if f.acquireErr != nil {
		return nil, nil, f.acquireErr
	}
	l, rec, err := f.Store.Acquire(ctx, scope, key, fp)
	if l != nil {
		l = &faultyLease{Lease: l, f: f}
	}
	return l, rec, err
}

type faultyLease struct {
	idempotency.Lease
	f *faultyStore
}

func (l *faultyLease) Complete(ctx context.Context, resp []byte) error {
	l.f.completes++
	if l.f.completeErr != nil {
		return l.f.completeErr
	}
	return l.Lease.Complete(ctx, resp)
}

func (l *faultyLease) Release(ctx context.Context) error {
	l.f.releases++
	if l.f.releaseErr != nil {
		return l.f.releaseErr
	}
	return l.Lease.Release(ctx)
}

func TestConsumerStoreFailures(t *testing.T) {
	ctx := context.Background()
	d := broker.Delivery{Message: broker.Message{ID: "m"}, Group: "g"}
	calls := 0
	next := func(context.Context, broker.Delivery) error { calls++; return nil }

	down := errors.New("store down")
	f := &faultyStore{Store: newMemory(t), acquireErr: down}
	mw, _ := idempotency.Consumer(f, idempotency.ConsumerConfig{})
	if err := mw(next)(ctx, d); !errors.Is(err, down) || calls != 0 {
		t.Fatalf("Acquire failing: err %v, %d calls; want the store error and no call", err, calls)
	}

	// Marking done fails after the handler succeeded: still acknowledged,
	// since redelivering would repeat the effect.
	f = &faultyStore{Store: newMemory(t), completeErr: down}
	mw, _ = idempotency.Consumer(f, idempotency.ConsumerConfig{})
	if err := mw(next)(ctx, d); err != nil || calls != 1 || f.completes != 1 {
		t.Fatalf("Complete failing: err %v, %d calls, %d completes; want nil, 1, 1", err, calls, f.completes)
	}

	// Releasing fails after the handler failed: the handler's error wins.
	f = &faultyStore{Store: newMemory(t), releaseErr: down}
	mw, _ = idempotency.Consumer(f, idempotency.ConsumerConfig{})
	boom := errors.New("boom")
	if err := mw(func(context.Context, broker.Delivery) error { return boom })(ctx, d); !errors.Is(err, boom) || f.releases != 1 {
		t.Fatalf("Release failing: err %v, %d releases; want the handler's error and 1 release", err, f.releases)
	}
}

func TestHTTPLimitsAndFailures(t *testing.T) {
	post := func(h http.Handler, key, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/orders", strings.NewReader(body))
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	calls := 0
	big := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		io.WriteString(w, strings.Repeat("x", 20))
	})

	// A response larger than MaxResponseBytes is sent but not kept.
	mw, err := idempotency.HTTP(newMemory(t), idempotency.HTTPConfig{MaxResponseBytes: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if r := post(mw(big), "k", "b"); r.Code != 200 || r.Body.Len() != 20 || r.Header().Get("Idempotent-Replayed") != "" {
			t.Fatalf("oversized response %d: %d, %d bytes, replayed %q", i, r.Code, r.Body.Len(), r.Header().Get("Idempotent-Replayed"))
		}
	}
	if calls != 2 {
		t.Fatalf("handler ran %d times, want 2 (oversized responses are not kept)", calls)
	}

	// A request body larger than MaxBodyBytes gets 413 without running.
	mw, _ = idempotency.HTTP(newMemory(t), idempotency.HTTPConfig{MaxBodyBytes: 4})
	if r := post(mw(big), "k", "12345"); r.Code != http.StatusRequestEntityTooLarge || calls != 2 {
		t.Fatalf("oversized body: %d, %d calls; want 413 and no call", r.Code, calls)
	}

	// Keep can store server errors too.
	fail := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(http.StatusBadGateway)
	})
	mw, _ = idempotency.HTTP(newMemory(t), idempotency.HTTPConfig{Keep: func(int) bool { return true }})
	post(mw(fail), "k", "b")
	if r := post(mw(fail), "k", "b"); r.Code != http.StatusBadGateway || r.Header().Get("Idempotent-Replayed") != "true" || calls != 3 {
		t.Fatalf("kept 502: %d replayed %q, %d calls", r.Code, r.Header().Get("Idempotent-Replayed"), calls)
	}

	// A store that is down: 503 without running; a store that cannot mark
	// done: the response still goes out.
	down := errors.New("down")
	mw, _ = idempotency.HTTP(&faultyStore{Store: newMemory(t), acquireErr: down}, idempotency.HTTPConfig{})
	if r := post(mw(big), "k", "b"); r.Code != http.StatusServiceUnavailable || calls != 3 {
		t.Fatalf("store down: %d, %d calls; want 503 and no call", r.Code, calls)
	}
	mw, _ = idempotency.HTTP(&faultyStore{Store: newMemory(t), completeErr: down}, idempotency.HTTPConfig{})
	if r := post(mw(big), "k", "b"); r.Code != 200 || r.Body.Len() != 20 || calls != 4 {
		t.Fatalf("Complete failing: %d, %d bytes, %d calls", r.Code, r.Body.Len(), calls)
	}

	// Quoted keys unescape; two key headers are refused. The stored key
	// names the caller (anonymous here: "0::"), so no key a caller sends can
	// name another caller's.
	st := newMemory(t)
	mw, _ = idempotency.HTTP(st, idempotency.HTTPConfig{Scope: "api"})
	post(mw(big), `"a\"b\\c"`, "b")
	if _, rec, _ := st.Acquire(context.Background(), "api", `0::a"b\c`, nil); rec == nil {
		t.Fatal(`quoted key "a\"b\\c" was not stored as a"b\c`)
	}
	req := httptest.NewRequest("POST", "/orders", nil)
	req.Header.Add("Idempotency-Key", "k1")
	req.Header.Add("Idempotency-Key", "k2")
	r := httptest.NewRecorder()
	mw(big).ServeHTTP(r, req)
	if r.Code != http.StatusBadRequest {
		t.Fatalf("two key headers: %d, want 400", r.Code)
	}

	for _, cfg := range []idempotency.HTTPConfig{{MaxKeyBytes: idempotency.MaxKeyBytes + 1}, {MaxResponseBytes: -1}, {Scope: "a\x00b"}} {
		if _, err := idempotency.HTTP(st, cfg); err == nil {
			t.Errorf("HTTP(%+v) accepted", cfg)
		}
	}
}

// Hop-by-hop headers are not replayed; 1xx responses pass through.
func TestHTTPReplayHeaders(t *testing.T) {
	mw, _ := idempotency.HTTP(newMemory(t), idempotency.HTTPConfig{})
	h := mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.Header().Set("X-Order", "7")
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusCreated)
		w.(http.Flusher).Flush()
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	for i := range 2 {
		req, _ := http.NewRequest("POST", srv.URL, nil)
		req.Header.Set("Idempotency-Key", "k")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// The handler flushed its headers early, so the request is still
		// running until the body ends: read it to the end before repeating.
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-Order") != "7" {
			t.Fatalf("response %d: %d %v", i, resp.StatusCode, resp.Header)
		}
		if i == 1 && (resp.Header.Get("Connection") != "" || resp.Header.Get("Idempotent-Replayed") != "true") {
			t.Fatalf("replay: %v, want no hop-by-hop Connection header, replayed", resp.Header)
		}
	}
}

// fakeCounter records the outcomes counted by the middleware.
type fakeProvider struct {
	noop.MeterProvider
	c *fakeCounter
}

func (p fakeProvider) Meter(string, ...metric.MeterOption) metric.Meter { return fakeMeter{c: p.c} }

type fakeMeter struct {
	noop.Meter
	c *fakeCounter
}

func (m fakeMeter) Int64Counter(string, ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return m.c, nil
}

type fakeCounter struct {
	noop.Int64Counter
	mu sync.Mutex
	n  map[string]int64
}

func (c *fakeCounter) Add(_ context.Context, v int64, opts ...metric.AddOption) {
	set := metric.NewAddConfig(opts).Attributes()
	kind, _ := set.Value(attribute.Key("steadfast.idempotency.kind"))
	outcome, _ := set.Value(attribute.Key("steadfast.idempotency.outcome"))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[kind.AsString()+"/"+outcome.AsString()] += v
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	c := &fakeCounter{n: map[string]int64{}}
	st := newMemory(t)
	mw, _ := idempotency.Consumer(st, idempotency.ConsumerConfig{MeterProvider: fakeProvider{c: c}})
	fail := true
	h := mw(func(context.Context, broker.Delivery) error {
		if fail {
			fail = false
			return errors.New("once")
		}
		return nil
	})
	d := broker.Delivery{Message: broker.Message{ID: "m"}, Group: "g"}
	_ = h(ctx, d)
	_ = h(ctx, d)
	_ = h(ctx, d)
	_ = h(ctx, broker.Delivery{Group: "g"})
	want := map[string]int64{"consumer/failed": 1, "consumer/processed": 1, "consumer/duplicate": 1, "consumer/error": 1}
	for k, v := range want {
		if c.n[k] != v {
			t.Errorf("%s = %d, want %d (all: %v)", k, c.n[k], v, c.n)
		}
	}
}

// TestHTTPConfigValidate: a setting out of range is an error wrapping
// ErrInvalidConfig (and ErrInvalidKey for a scope the stores refuse).
func TestHTTPConfigValidate(t *testing.T) {
	for _, c := range []idempotency.HTTPConfig{{MaxKeyBytes: -1}, {MaxBodyBytes: -1}, {MaxResponseBytes: -1}, {Scope: strings.Repeat("s", 1000)}} {
		if err := c.Validate(); !errors.Is(err, idempotency.ErrInvalidConfig) {
			t.Errorf("%+v: Validate = %v, want ErrInvalidConfig", c, err)
		}
	}
	if err := (idempotency.HTTPConfig{Scope: strings.Repeat("s", 1000)}).Validate(); !errors.Is(err, idempotency.ErrInvalidKey) {
		t.Errorf("long scope: %v, want ErrInvalidKey too", err)
	}
	if err := (idempotency.HTTPConfig{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}
