package idempotencytest

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/steadfast-go/steadfast/idempotency"
)

func (s *suite) httpCases() []testCase {
	return []testCase{
		{"FirstRunsRepeatReplays", s.httpReplay},
		{"RepeatWhileRunningConflicts", s.httpInProgress},
		{"DifferentRequestUnprocessable", s.httpMismatch},
		{"MissingKey", s.httpMissingKey},
		{"ServerErrorNotStored", s.httpServerError},
		{"PanicFreesKey", s.httpPanic},
		{"ConcurrentIdenticalRequests", s.httpConcurrent},
		{"ClientsAreSeparate", s.httpClients},
		{"DefaultScopesByCredentials", s.httpDefaultClients},
	}
}

// httpServer runs handler behind the HTTP middleware of a fresh store.
func (s *suite) httpServer(t *testing.T, cfg idempotency.HTTPConfig, handler http.Handler) *httptest.Server {
	t.Helper()
	st := s.store(t, longLease)
	if cfg.Scope == "" {
		cfg.Scope = unique("api")
	}
	mw, err := idempotency.HTTP(st, cfg)
	if err != nil {
		t.Fatalf("idempotency.HTTP: %v", err)
	}
	srv := httptest.NewServer(mw(handler))
	t.Cleanup(srv.Close)
	return srv
}

type response struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, srv *httptest.Server, method, path, key, body string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set(idempotency.HeaderIdempotencyKey, key)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, path, err)
		return response{}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

// created is a handler that creates a resource per call, numbering them.
type created struct{ n atomic.Int64 }

func (c *created) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	n := c.n.Add(1)
	w.Header().Set("Location", "/orders/"+strconv.FormatInt(n, 10))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Add("X-Multi", "one")
	w.Header().Add("X-Multi", "two")
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, `{"order":`+strconv.FormatInt(n, 10)+`,"echo":"`+string(body)+`"}`)
}

// The first request runs; repeats get its status, headers and body, marked
// as replayed, without running the handler. A key can be quoted (IETF
// sf-string) or plain (Stripe).
func (s *suite) httpReplay(t *testing.T) {
	h := &created{}
	srv := s.httpServer(t, idempotency.HTTPConfig{}, h)
	first := do(t, srv, "POST", "/orders?x=1", "key-1", "pay 10")
	if first.status != http.StatusCreated || first.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("first request: %d %v, want 201 not replayed", first.status, first.header)
	}
	for i, key := range []string{"key-1", `"key-1"`} {
		again := do(t, srv, "POST", "/orders?x=1", key, "pay 10")
		switch {
		case again.status != first.status || again.body != first.body:
			t.Fatalf("repeat %d: %d %q, want %d %q", i, again.status, again.body, first.status, first.body)
		case again.header.Get(idempotency.HeaderReplayed) != "true":
			t.Fatalf("repeat %d: %s header = %q, want true", i, idempotency.HeaderReplayed, again.header.Get(idempotency.HeaderReplayed))
		case again.header.Get("Location") != first.header.Get("Location") ||
			again.header.Get("Content-Type") != "application/json" ||
			strings.Join(again.header.Values("X-Multi"), ",") != "one,two":
			t.Fatalf("repeat %d: headers %v, want those of the first response %v", i, again.header, first.header)
		}
	}
	if n := h.n.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	// Other methods pass through untouched, and another key runs again.
	if r := do(t, srv, "GET", "/orders", "key-1", ""); r.status != http.StatusCreated || r.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("GET with a used key: %d replayed=%q, want the handler's own response", r.status, r.header.Get(idempotency.HeaderReplayed))
	}
	if r := do(t, srv, "POST", "/orders?x=1", "key-2", "pay 10"); r.status != http.StatusCreated || r.body == first.body {
		t.Fatalf("new key: %d %q, want a new resource", r.status, r.body)
	}
	if n := h.n.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3", n)
	}
}

// A repeat while the first request still runs gets 409; after the first
// finishes the repeat gets the stored response.
func (s *suite) httpInProgress(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	srv := s.httpServer(t, idempotency.HTTPConfig{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		close(entered)
		<-release
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "accepted")
	}))
	firstc := make(chan response, 1)
	go func() { firstc <- do(t, srv, "POST", "/pay", "k", "body") }()
	<-entered
	for range 2 {
		if r := do(t, srv, "POST", "/pay", "k", "body"); r.status != http.StatusConflict ||
			!strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") {
			close(release)
			t.Fatalf("repeat while running: %d %q (%s), want 409 problem+json", r.status, r.body, r.header.Get("Content-Type"))
		}
	}
	close(release)
	if r := <-firstc; r.status != http.StatusAccepted || r.body != "accepted" {
		t.Fatalf("first request: %d %q, want 202 accepted", r.status, r.body)
	}
	if r := do(t, srv, "POST", "/pay", "k", "body"); r.status != http.StatusAccepted || r.header.Get(idempotency.HeaderReplayed) != "true" {
		t.Fatalf("repeat after the first finished: %d replayed=%q, want 202 replayed", r.status, r.header.Get(idempotency.HeaderReplayed))
	}
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", calls.Load())
	}
}

// The same key with a different method, path, query or body gets 422 and
// does not run the handler.
func (s *suite) httpMismatch(t *testing.T) {
	h := &created{}
	srv := s.httpServer(t, idempotency.HTTPConfig{Methods: []string{"POST", "PATCH", "PUT"}}, h)
	if r := do(t, srv, "POST", "/orders", "k", "pay 10"); r.status != http.StatusCreated {
		t.Fatalf("first request: %d", r.status)
	}
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/orders", "pay 11"},
		{"POST", "/refunds", "pay 10"},
		{"POST", "/orders?dry=1", "pay 10"},
		{"PATCH", "/orders", "pay 10"},
		{"PUT", "/orders", "pay 10"},
	} {
		r := do(t, srv, c.method, c.path, "k", c.body)
		if r.status != http.StatusUnprocessableEntity || !strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") {
			t.Fatalf("%s %s %q with a used key: %d %q, want 422 problem+json", c.method, c.path, c.body, r.status, r.body)
		}
	}
	if n := h.n.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
}

// A route that requires a key answers 400 without one, or with a malformed
// one; a route that does not passes such requests through.
func (s *suite) httpMissingKey(t *testing.T) {
	required := &created{}
	srv := s.httpServer(t, idempotency.HTTPConfig{Required: true}, required)
	for _, key := range []string{"", `"unterminated`, "ключ", strings.Repeat("k", 256)} {
		r := do(t, srv, "POST", "/orders", "", "x", idempotency.HeaderIdempotencyKey, key)
		if r.status != http.StatusBadRequest || !strings.HasPrefix(r.header.Get("Content-Type"), "application/problem+json") {
			t.Fatalf("key %q on a route requiring one: %d %q, want 400 problem+json", key, r.status, r.body)
		}
	}
	if n := required.n.Load(); n != 0 {
		t.Fatalf("handler ran %d times without a valid key, want 0", n)
	}

	optional := &created{}
	srv = s.httpServer(t, idempotency.HTTPConfig{}, optional)
	for range 2 {
		if r := do(t, srv, "POST", "/orders", "", "x"); r.status != http.StatusCreated || r.header.Get(idempotency.HeaderReplayed) != "" {
			t.Fatalf("no key on an optional route: %d, want 201 from the handler", r.status)
		}
	}
	if r := do(t, srv, "POST", "/orders", "", "x", idempotency.HeaderIdempotencyKey, strings.Repeat("k", 256)); r.status != http.StatusBadRequest {
		t.Fatalf("overlong key on an optional route: %d, want 400", r.status)
	}
	if n := optional.n.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
	if _, err := idempotency.HTTP(nil, idempotency.HTTPConfig{}); !errors.Is(err, idempotency.ErrNilStore) {
		t.Fatalf("HTTP(nil) = %v, want ErrNilStore", err)
	}
	if _, err := idempotency.HTTP(s.store(t, longLease), idempotency.HTTPConfig{MaxBodyBytes: -1}); err == nil {
		t.Fatal("HTTP with MaxBodyBytes -1: no error")
	}
}

// A 5xx response is not stored: the repeat runs the handler again. A 4xx
// response is stored and replayed.
func (s *suite) httpServerError(t *testing.T) {
	var calls atomic.Int64
	srv := s.httpServer(t, idempotency.HTTPConfig{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		switch {
		case r.URL.Path == "/invalid":
			http.Error(w, "invalid amount", http.StatusBadRequest)
		case n == 1:
			http.Error(w, "database down", http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusCreated)
		}
	}))
	if r := do(t, srv, "POST", "/orders", "k", "x"); r.status != http.StatusServiceUnavailable {
		t.Fatalf("first: %d, want the handler's 503", r.status)
	}
	if r := do(t, srv, "POST", "/orders", "k", "x"); r.status != http.StatusCreated || r.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("retry after a 503: %d replayed=%q, want 201 from the handler", r.status, r.header.Get(idempotency.HeaderReplayed))
	}
	if r := do(t, srv, "POST", "/orders", "k", "x"); r.status != http.StatusCreated || r.header.Get(idempotency.HeaderReplayed) != "true" {
		t.Fatalf("repeat after success: %d, want 201 replayed", r.status)
	}
	for i := range 2 {
		if r := do(t, srv, "POST", "/invalid", "k2", "x"); r.status != http.StatusBadRequest || !strings.Contains(r.body, "invalid amount") {
			t.Fatalf("client error %d: %d %q, want 400 invalid amount", i, r.status, r.body)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3", n)
	}
}

// A panicking handler frees the key; the retry runs the handler.
func (s *suite) httpPanic(t *testing.T) {
	var calls atomic.Int64
	srv := s.httpServer(t, idempotency.HTTPConfig{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			panic(http.ErrAbortHandler) // aborts the connection without a log line
		}
		w.WriteHeader(http.StatusCreated)
	}))
	req, _ := http.NewRequest("POST", srv.URL+"/orders", strings.NewReader("x"))
	req.Header.Set(idempotency.HeaderIdempotencyKey, "k")
	// A fresh connection: net/http retries a request carrying an
	// Idempotency-Key when a reused connection fails, which would hide the
	// abort.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("panicking handler: got %d, want the connection aborted", resp.StatusCode)
	}
	if r := do(t, srv, "POST", "/orders", "k", "x"); r.status != http.StatusCreated || r.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("retry after a panic: %d, want 201 from the handler", r.status)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// 20 identical requests at once: the handler runs once; every response is
// the original, its replay, or 409.
func (s *suite) httpConcurrent(t *testing.T) {
	h := &created{}
	srv := s.httpServer(t, idempotency.HTTPConfig{}, h)
	const n = 20
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		resps = make([]response, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resps[i] = do(t, srv, "POST", "/orders", "same", "pay 10")
		}()
	}
	close(start)
	wg.Wait()
	if t.Failed() {
		return
	}
	final := do(t, srv, "POST", "/orders", "same", "pay 10")
	if final.status != http.StatusCreated || final.header.Get(idempotency.HeaderReplayed) != "true" {
		t.Fatalf("repeat after the burst: %d, want 201 replayed", final.status)
	}
	originals, replays, conflicts := 0, 0, 0
	for i, r := range resps {
		switch {
		case r.status == http.StatusConflict:
			conflicts++
		case r.status == http.StatusCreated && r.body == final.body:
			if r.header.Get(idempotency.HeaderReplayed) == "true" {
				replays++
			} else {
				originals++
			}
		default:
			t.Fatalf("response %d: %d %q, want 201 %q or 409", i, r.status, r.body, final.body)
		}
	}
	if originals != 1 || h.n.Load() != 1 {
		t.Fatalf("%d original responses, handler ran %d times; want 1 and 1", originals, h.n.Load())
	}
	t.Logf("%d identical requests: 1 original, %d replays, %d conflicts", n, replays, conflicts)
}

// With HTTPConfig.Client, two callers using the same key do not see each
// other's responses.
func (s *suite) httpClients(t *testing.T) {
	h := &created{}
	srv := s.httpServer(t, idempotency.HTTPConfig{Client: func(r *http.Request) string { return r.Header.Get("X-Account") }}, h)
	a := do(t, srv, "POST", "/orders", "k", "x", "X-Account", "acct:1")
	b := do(t, srv, "POST", "/orders", "k", "x", "X-Account", "acct")
	if a.status != http.StatusCreated || b.status != http.StatusCreated || a.body == b.body || b.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("two clients, one key: %d %q and %d %q, want two distinct originals", a.status, a.body, b.status, b.body)
	}
	if r := do(t, srv, "POST", "/orders", "k", "x", "X-Account", "acct:1"); r.body != a.body || r.header.Get(idempotency.HeaderReplayed) != "true" {
		t.Fatalf("repeat by the first client: %q, want its own replay %q", r.body, a.body)
	}
	if n := h.n.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2", n)
	}
}

// session is a handler that logs the caller in: each call creates a session
// and sets its cookie.
type session struct{ n atomic.Int64 }

func (c *session) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.n.Add(1)
	http.SetCookie(w, &http.Cookie{Name: "session", Value: "s" + strconv.FormatInt(n, 10)})
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, `{"session":`+strconv.FormatInt(n, 10)+`}`)
}

// With the default config, a stored response is replayed only to the caller
// whose credentials produced it: another caller sending the same key and body
// runs the handler and never receives the first caller's Set-Cookie. An
// anonymous caller's response is stored without its Set-Cookie.
func (s *suite) httpDefaultClients(t *testing.T) {
	h := &session{}
	srv := s.httpServer(t, idempotency.HTTPConfig{}, h)
	a := do(t, srv, "POST", "/login", "k", "same", "Authorization", "Bearer alice")
	b := do(t, srv, "POST", "/login", "k", "same", "Authorization", "Bearer bob")
	c := do(t, srv, "POST", "/login", "k", "same", "Cookie", "tracking=bob")
	if a.header.Get("Set-Cookie") != "session=s1" || b.header.Get("Set-Cookie") != "session=s2" ||
		c.header.Get("Set-Cookie") != "session=s3" || b.header.Get(idempotency.HeaderReplayed) != "" {
		t.Fatalf("three callers, one key: Set-Cookie %q, %q, %q (replayed %q); want three originals",
			a.header.Get("Set-Cookie"), b.header.Get("Set-Cookie"), c.header.Get("Set-Cookie"), b.header.Get(idempotency.HeaderReplayed))
	}
	again := do(t, srv, "POST", "/login", "k", "same", "Authorization", "Bearer alice")
	if again.header.Get(idempotency.HeaderReplayed) != "true" || again.header.Get("Set-Cookie") != "session=s1" || again.body != a.body {
		t.Fatalf("repeat by the first caller: %v %q, want its own replay with its cookie", again.header, again.body)
	}
	// Anonymous callers share a key space; the stored response has no cookie.
	anon := do(t, srv, "POST", "/login", "anon-key", "same")
	if anon.header.Get("Set-Cookie") != "session=s4" {
		t.Fatalf("anonymous original: Set-Cookie %q, want session=s4", anon.header.Get("Set-Cookie"))
	}
	other := do(t, srv, "POST", "/login", "anon-key", "same")
	if other.header.Get(idempotency.HeaderReplayed) != "true" || other.header.Get("Set-Cookie") != "" || other.body != anon.body {
		t.Fatalf("anonymous repeat: %v %q, want a replay without Set-Cookie", other.header, other.body)
	}
	if n := h.n.Load(); n != 4 {
		t.Fatalf("handler ran %d times, want 4", n)
	}
}
