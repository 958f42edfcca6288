package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/idempotency/internal/outcome"
)

// HTTP header names the middleware reads and writes.
const (
	// HeaderIdempotencyKey is the request header carrying the key.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderReplayed is set to "true" on a response replayed from the store.
	HeaderReplayed = "Idempotent-Replayed"
)

// HTTPConfig configures the HTTP middleware. The zero value is ready to use;
// set Client for any API with more than one caller.
type HTTPConfig struct {
	// Scope names the API; keys are deduplicated within it. Default "http".
	Scope string
	// Client identifies the caller of a request, so that keys are
	// deduplicated per caller and a stored response is replayed only to the
	// caller that produced it (the IETF draft scopes keys per client). Return
	// an account or API-key ID from your authentication; "" means an
	// anonymous caller. Default CredentialsClient: a digest of the request's
	// credentials (Authorization, Proxy-Authorization, Cookie, TLS client
	// certificate), so two callers with different credentials never share a
	// key even when they send the same key and body.
	//
	// Anonymous callers share one key space. A response stored for an
	// anonymous caller is kept without its Set-Cookie headers, so a session
	// it creates is never handed to whoever repeats the key: the replay
	// carries the status, the other headers and the body. To share keys
	// across callers on purpose, return one constant (see SharedClient).
	Client func(r *http.Request) string
	// Header is the request header carrying the key. Default
	// HeaderIdempotencyKey.
	Header string
	// Required makes a request without the header fail with 400 Bad
	// Request. Default false: such requests pass through without
	// deduplication. A malformed key always gets 400.
	Required bool
	// Methods the middleware applies to; requests with other methods pass
	// through untouched. Default POST and PATCH, the methods that are not
	// idempotent by definition.
	Methods []string
	// MaxKeyBytes is the longest key accepted; a longer one gets 400.
	// Default 255.
	MaxKeyBytes int
	// MaxBodyBytes is the largest request body read to fingerprint the
	// request; a larger body gets 413 Content Too Large without running the
	// handler. Default 1 MiB.
	MaxBodyBytes int64
	// MaxResponseBytes is the largest response body stored. A larger
	// response is sent but not kept: the key is released (and a warning
	// logged), so a repeat of the request runs the handler again. Default
	// 1 MiB.
	MaxResponseBytes int
	// Keep decides from the status code whether a response is stored.
	// Responses not kept release the key, so a repeat runs the handler again.
	// Default: every status below 500 (a server error is retried, a client
	// error is replayed).
	Keep func(status int) bool
	// Fingerprint identifies the request a key was first used with; the
	// same key with a different fingerprint gets 422 Unprocessable Content.
	// Default: SHA-256 of the method, the path with its query, and the
	// body.
	Fingerprint func(r *http.Request, body []byte) []byte
	// Logger receives a warning for each store failure. Default
	// slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the steadfast.idempotency.outcomes counter,
	// tagged with kind=http and outcome. Default: the OpenTelemetry
	// global provider.
	MeterProvider metric.MeterProvider
}

func (c HTTPConfig) withDefaults() HTTPConfig {
	if c.Scope == "" {
		c.Scope = "http"
	}
	if c.Header == "" {
		c.Header = HeaderIdempotencyKey
	}
	if len(c.Methods) == 0 {
		c.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	if c.MaxKeyBytes == 0 {
		c.MaxKeyBytes = 255
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = 1 << 20
	}
	if c.Client == nil {
		c.Client = CredentialsClient
	}
	if c.Keep == nil {
		c.Keep = func(status int) bool { return status < 500 }
	}
	if c.Fingerprint == nil {
		c.Fingerprint = DefaultFingerprint
	}
	return c
}

// Validate reports a configuration error: negative limits, or a scope the
// stores do not accept. The error wraps ErrInvalidConfig, and
// ErrInvalidKey for a bad scope.
func (c HTTPConfig) Validate() error {
	c = c.withDefaults()
	switch {
	case c.MaxKeyBytes < 0 || c.MaxKeyBytes > MaxKeyBytes:
		return fmt.Errorf("%w: HTTPConfig.MaxKeyBytes %d out of range 1..%d", ErrInvalidConfig, c.MaxKeyBytes, MaxKeyBytes)
	case c.MaxBodyBytes < 0:
		return fmt.Errorf("%w: HTTPConfig.MaxBodyBytes %d < 0", ErrInvalidConfig, c.MaxBodyBytes)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("%w: HTTPConfig.MaxResponseBytes %d < 0", ErrInvalidConfig, c.MaxResponseBytes)
	}
	if err := CheckKey(c.Scope, "k"); err != nil {
		return fmt.Errorf("%w: HTTPConfig.Scope: %w", ErrInvalidConfig, err)
	}
	return nil
}

// CredentialsClient is HTTPConfig.Client's default: it names the caller by
// a digest of the credentials the request carries (the Authorization,
// Proxy-Authorization and Cookie headers and the TLS client certificate), or
// "" for a request without any. Callers with different credentials get
// different key spaces; the digest keeps the credentials themselves out of
// the store.
func CredentialsClient(r *http.Request) string {
	h := sha256.New()
	any := false
	for _, name := range []string{"Authorization", "Proxy-Authorization", "Cookie"} {
		for _, v := range r.Header.Values(name) {
			any = true
			io.WriteString(h, name)
			h.Write([]byte{0})
			io.WriteString(h, v)
			h.Write([]byte{0})
		}
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		any = true
		io.WriteString(h, "tls")
		h.Write([]byte{0})
		h.Write(r.TLS.PeerCertificates[0].Raw)
	}
	if !any {
		return ""
	}
	return "c-" + hex.EncodeToString(h.Sum(nil)[:16])
}

// SharedClient names every caller alike: with HTTPConfig.Client set to it,
// all callers share one key space, and one caller repeating another's key
// with an identical request receives the other's stored response, headers
// (Set-Cookie included) and all. Use it only where every caller may see
// every response, such as a trusted internal service.
func SharedClient(*http.Request) string { return "shared" }

// DefaultFingerprint is the SHA-256 of the request's method, escaped path,
// raw query and body.
func DefaultFingerprint(r *http.Request, body []byte) []byte {
	h := sha256.New()
	io.WriteString(h, r.Method)
	h.Write([]byte{0})
	io.WriteString(h, r.URL.EscapedPath())
	h.Write([]byte{0})
	io.WriteString(h, r.URL.RawQuery)
	h.Write([]byte{0})
	h.Write(body)
	return h.Sum(nil)
}

// HTTP returns net/http middleware implementing the Idempotency-Key header
// (IETF httpapi idempotency-key draft semantics, as Stripe's API does it)
// for the configured methods:
//
//   - the first request with a key runs the handler while holding the key;
//     its response (status, headers, body) is stored with the request's
//     fingerprint;
//   - a repeat with the same key and fingerprint gets the stored response,
//     marked with the Idempotent-Replayed: true header, without running
//     the handler;
//   - a repeat while the first is still running gets 409 Conflict;
//   - the same key with a different fingerprint (method, path, body) gets
//     422 Unprocessable Content;
//   - a malformed key (empty, too long, not printable ASCII) gets 400 Bad
//     Request; a missing key gets 400 when HTTPConfig.Required is set and
//     passes through without deduplication otherwise;
//   - a store failure gets 503 Service Unavailable, without running the
//     handler.
//
// Error responses are RFC 9457 problem details (application/problem+json).
// A response that is not kept (HTTPConfig.Keep, MaxResponseBytes) or a
// handler that panics releases the key, so the repeat runs the handler again.
// The key is held for the whole request: the response is stored when the
// handler returns, before the server ends the response, so a client that
// read a response to its end and repeats the request gets the replay. A
// handler that flushes early lets the client see headers sooner, but the
// request still runs until the body ends. With the Postgres store that is one
// open transaction and pool connection per request in flight (size the pool
// for it); a store configured to wait for a held key (postgres Config.Wait)
// answers a repeat with the stored response if the first request finishes
// within the wait, and 409 otherwise.
//
// HTTP returns ErrNilStore for a nil store and an error for an invalid
// config.
func HTTP(store Store, cfg HTTPConfig) (func(http.Handler) http.Handler, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	rec := outcome.New("http", cfg.Logger, cfg.MeterProvider)
	return func(next http.Handler) http.Handler {
		return &httpHandler{store: store, cfg: cfg, rec: rec, next: next}
	}, nil
}

type httpHandler struct {
	store Store
	cfg   HTTPConfig
	rec   *outcome.Recorder
	next  http.Handler
}

func (h *httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !slices.Contains(h.cfg.Methods, r.Method) {
		h.next.ServeHTTP(w, r)
		return
	}
	ctx := r.Context()
	raw, present := r.Header[http.CanonicalHeaderKey(h.cfg.Header)]
	if !present || len(raw) == 0 || raw[0] == "" {
		if h.cfg.Required {
			h.rec.Record(ctx, outcome.MissingKey, h.cfg.Scope, "")
			problem(w, http.StatusBadRequest, "Idempotency-Key is missing",
				"This operation requires an "+h.cfg.Header+" header.")
			return
		}
		h.next.ServeHTTP(w, r)
		return
	}
	key, err := parseKey(raw, h.cfg.MaxKeyBytes)
	client := ""
	if err == nil {
		client = h.cfg.Client(r)
		key = strconv.Itoa(len(client)) + ":" + client + ":" + key
	}
	if err == nil {
		err = CheckKey(h.cfg.Scope, key)
	}
	if err != nil {
		h.rec.Record(ctx, outcome.MissingKey, h.cfg.Scope, "")
		problem(w, http.StatusBadRequest, "Idempotency-Key is invalid", err.Error())
		return
	}

	body, err := io.ReadAll(io.LimitReader(r.Body, h.cfg.MaxBodyBytes+1))
	if err != nil {
		h.rec.Record(ctx, outcome.Error, h.cfg.Scope, key)
		problem(w, http.StatusBadRequest, "Request body could not be read", err.Error())
		return
	}
	if int64(len(body)) > h.cfg.MaxBodyBytes {
		h.rec.Record(ctx, outcome.Error, h.cfg.Scope, key)
		problem(w, http.StatusRequestEntityTooLarge, "Request body too large",
			fmt.Sprintf("Requests with an idempotency key are limited to %d bytes.", h.cfg.MaxBodyBytes))
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	fp := h.cfg.Fingerprint(r, body)

	lease, done, err := h.store.Acquire(ctx, h.cfg.Scope, key, fp)
	switch {
	case errors.Is(err, ErrInProgress):
		h.rec.Record(ctx, outcome.InProgress, h.cfg.Scope, key)
		problem(w, http.StatusConflict, "A request with this Idempotency-Key is being processed",
			"Retry after the first request has finished.")
		return
	case err != nil:
		h.rec.Record(ctx, outcome.Error, h.cfg.Scope, key)
		h.rec.Log.WarnContext(ctx, "idempotency: store failed", "scope", h.cfg.Scope, "key", key, "error", err)
		problem(w, http.StatusServiceUnavailable, "Idempotency store unavailable", "Retry the request later.")
		return
	case done != nil:
		if !bytes.Equal(done.Fingerprint, fp) {
			h.rec.Record(ctx, outcome.Mismatch, h.cfg.Scope, key)
			problem(w, http.StatusUnprocessableEntity, "Idempotency-Key reused",
				"This key was used with a different request (method, path or body).")
			return
		}
		h.replay(w, r, key, done.Response)
		return
	}
	h.run(w, r, key, client == "", lease)
}

// run calls the handler while holding lease and stores what it wrote.
// An anonymous caller's response is stored without Set-Cookie.
func (h *httpHandler) run(w http.ResponseWriter, r *http.Request, key string, anonymous bool, lease Lease) {
	ctx := r.Context()
	rw := &recorder{w: w, limit: h.cfg.MaxResponseBytes}
	finished := false
	defer func() {
		if finished {
			return
		}
		// The handler panicked: free the key and let the panic continue.
		cctx, cancel := detached(ctx)
		defer cancel()
		if err := lease.Release(cctx); err != nil {
			h.rec.Log.WarnContext(ctx, "idempotency: release after panic", "scope", h.cfg.Scope, "key", key, "error", err)
		}
		h.rec.Record(ctx, outcome.Failed, h.cfg.Scope, key)
	}()
	h.next.ServeHTTP(rw, r)
	finished = true

	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	cctx, cancel := detached(ctx)
	defer cancel()
	if !h.cfg.Keep(rw.status) || rw.overflow {
		if rw.overflow {
			h.rec.Log.WarnContext(ctx, "idempotency: response too large to store; a repeat will run again",
				"scope", h.cfg.Scope, "key", key, "limit", h.cfg.MaxResponseBytes)
		}
		if err := lease.Release(cctx); err != nil {
			h.rec.Log.WarnContext(ctx, "idempotency: release", "scope", h.cfg.Scope, "key", key, "error", err)
		}
		h.rec.Record(ctx, outcome.Failed, h.cfg.Scope, key)
		return
	}
	if anonymous {
		delete(rw.header, "Set-Cookie")
	}
	resp, err := json.Marshal(storedResponse{Version: 1, Status: rw.status, Header: rw.header, Body: rw.body.Bytes()})
	if err == nil {
		err = lease.Complete(cctx, resp)
	}
	if err != nil {
		h.rec.Log.WarnContext(ctx, "idempotency: response sent but not stored", "scope", h.cfg.Scope, "key", key, "error", err)
	}
	h.rec.Record(ctx, outcome.Processed, h.cfg.Scope, key)
}

func (h *httpHandler) replay(w http.ResponseWriter, r *http.Request, key string, stored []byte) {
	ctx := r.Context()
	var resp storedResponse
	if err := json.Unmarshal(stored, &resp); err != nil || resp.Version != 1 || resp.Status < 100 || resp.Status > 999 {
		h.rec.Record(ctx, outcome.Error, h.cfg.Scope, key)
		h.rec.Log.WarnContext(ctx, "idempotency: stored response unreadable", "scope", h.cfg.Scope, "key", key, "error", err)
		problem(w, http.StatusInternalServerError, "Stored response unreadable",
			"The response stored for this Idempotency-Key could not be decoded.")
		return
	}
	h.rec.Record(ctx, outcome.Duplicate, h.cfg.Scope, key)
	dst := w.Header()
	for k, v := range resp.Header {
		dst[k] = v
	}
	dst.Set(HeaderReplayed, "true")
	w.WriteHeader(resp.Status)
	if r.Method != http.MethodHead {
		w.Write(resp.Body)
	}
}

// storedResponse is the form in which the HTTP middleware keeps a response
// in a Store's Record.Response.
type storedResponse struct {
	Version int         `json:"v"`
	Status  int         `json:"status"`
	Header  http.Header `json:"header,omitempty"`
	Body    []byte      `json:"body,omitempty"`
}

// parseKey accepts the key as a plain token (as Stripe sends it) or as an
// RFC 8941 sf-string (as the IETF draft defines it).
func parseKey(values []string, limit int) (string, error) {
	if len(values) > 1 {
		return "", errors.New("more than one key header")
	}
	v := strings.TrimSpace(values[0])
	if strings.HasPrefix(v, `"`) {
		if len(v) < 2 || v[len(v)-1] != '"' {
			return "", errors.New("malformed quoted key")
		}
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			c := v[i]
			if c == '\\' {
				i++
				if i == len(v)-1 || (v[i] != '"' && v[i] != '\\') {
					return "", errors.New("malformed quoted key")
				}
				c = v[i]
			} else if c == '"' {
				return "", errors.New("malformed quoted key")
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return "", errors.New("key must be printable ASCII")
		}
	}
	switch {
	case v == "":
		return "", errors.New("empty key")
	case len(v) > limit:
		return "", fmt.Errorf("key is %d bytes, limit %d", len(v), limit)
	}
	return v, nil
}

func problem(w http.ResponseWriter, status int, title, detail string) {
	b, _ := json.Marshal(struct {
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail,omitempty"`
	}{title, status, detail})
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// hopByHop headers are not stored with a response.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Trailer", "Te"}

// recorder passes a response through to the client and keeps a copy of its
// status, headers and body (up to limit bytes).
type recorder struct {
	w           http.ResponseWriter
	limit       int
	wroteHeader bool
	status      int
	header      http.Header
	body        bytes.Buffer
	overflow    bool
}

func (rw *recorder) Header() http.Header { return rw.w.Header() }

func (rw *recorder) WriteHeader(code int) {
	if rw.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		rw.w.WriteHeader(code) // informational: not the final response
		return
	}
	rw.wroteHeader = true
	rw.status = code
	rw.header = rw.w.Header().Clone()
	for _, k := range hopByHop {
		delete(rw.header, k)
	}
	rw.w.WriteHeader(code)
}

func (rw *recorder) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.overflow {
		if rw.body.Len()+len(p) > rw.limit {
			rw.overflow = true
			rw.body = bytes.Buffer{}
		} else {
			rw.body.Write(p)
		}
	}
	return rw.w.Write(p)
}

// Unwrap lets http.ResponseController reach the underlying writer (Flush,
// deadlines).
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.w }

// Flush sends buffered data to the client, for handlers that test for
// http.Flusher directly.
func (rw *recorder) Flush() {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(rw.w).Flush()
}
