package outboxtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/brokertest"
	"github.com/steadfast-go/steadfast/outbox"
)

const storeTimeout = time.Minute

type storeSuite struct {
	factory Factory
}

// env is one store case's harness.
type env struct {
	t     *testing.T
	h     Harness
	ctx   context.Context
	topic string
}

func (s *storeSuite) newEnv(t *testing.T) *env {
	t.Helper()
	h := s.factory(t)
	if h.Store == nil || h.Enqueue == nil {
		t.Fatal("outboxtest: the factory must set Harness.Store and Harness.Enqueue")
	}
	return &env{t: t, h: h, ctx: ctxT(t, storeTimeout), topic: brokertest.UniqueName(t, "t")}
}

func (e *env) enqueue(msgs ...broker.Message) {
	e.t.Helper()
	if err := e.h.Enqueue(e.ctx, msgs...); err != nil {
		e.t.Fatalf("enqueue %d messages: %v", len(msgs), err)
	}
}

// seq enqueues, in one transaction, n messages per key, interleaved across
// keys (seq 0 of every key, then seq 1, ...), and returns them in order.
func (e *env) seq(n int, keys ...string) []broker.Message {
	e.t.Helper()
	var msgs []broker.Message
	for i := range n {
		for _, k := range keys {
			msgs = append(msgs, SeqMessage(e.topic, k, i))
		}
	}
	e.enqueue(msgs...)
	return msgs
}

func (e *env) claimFrom(s outbox.Store, limit int, deadBlocks bool) outbox.Claim {
	e.t.Helper()
	c, err := s.Claim(e.ctx, outbox.ClaimRequest{Limit: limit, DeadBlocksKey: deadBlocks})
	if err != nil {
		e.t.Fatalf("claim(limit %d): %v", limit, err)
	}
	e.t.Cleanup(func() { _ = c.Release(context.Background()) })
	return c
}

func (e *env) claim(limit int, deadBlocks bool) outbox.Claim {
	e.t.Helper()
	return e.claimFrom(e.h.Store, limit, deadBlocks)
}

func (e *env) complete(c outbox.Claim, o outbox.Outcome) {
	e.t.Helper()
	if err := c.Complete(e.ctx, o); err != nil {
		e.t.Fatalf("complete: %v", err)
	}
}

func (e *env) release(c outbox.Claim) {
	e.t.Helper()
	if err := c.Release(e.ctx); err != nil {
		e.t.Fatalf("release: %v", err)
	}
}

// publishAll claims until nothing is left, completing every row as
// published, and returns the records in claim order.
func (e *env) publishAll(deadBlocks bool) []outbox.Record {
	e.t.Helper()
	var out []outbox.Record
	for {
		c := e.claim(1000, deadBlocks)
		recs := c.Records()
		if len(recs) == 0 {
			e.release(c)
			return out
		}
		e.complete(c, outbox.Outcome{Published: ids(recs)})
		out = append(out, recs...)
	}
}

func ids(recs []outbox.Record) []int64 {
	out := make([]int64, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func payloads(recs []outbox.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = string(r.Message.Payload)
	}
	return out
}

func byKey(recs []outbox.Record) map[string][]outbox.Record {
	m := map[string][]outbox.Record{}
	for _, r := range recs {
		m[r.Message.Key] = append(m[r.Message.Key], r)
	}
	return m
}

func seqOf(r outbox.Record) int {
	n, _ := strconv.Atoi(r.Message.Header("seq"))
	return n
}

// checkIDOrder fails unless recs are in increasing ID order.
func checkIDOrder(t *testing.T, recs []outbox.Record, what string) {
	t.Helper()
	for i := 1; i < len(recs); i++ {
		if recs[i].ID <= recs[i-1].ID {
			t.Errorf("%s: records not in ID order: %d after %d", what, recs[i].ID, recs[i-1].ID)
			return
		}
	}
}

// roundTrip: every message field survives the store; rows come back
// pending, unattempted, in enqueue order; published rows are not claimed
// again; an invalid message is refused whole.
func (s *storeSuite) roundTrip(t *testing.T) {
	e := s.newEnv(t)
	payload := make([]byte, 256)
	for i := range payload {
		payload[i] = byte(i)
	}
	full := broker.Message{
		ID:      broker.NewID(),
		Topic:   e.topic,
		Key:     "order-42",
		Payload: payload,
		Headers: map[string]string{
			broker.HeaderType:        "order.created",
			broker.HeaderTraceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
			"x-Mixed-Case":           "value with spaces and ünïcode \" ' \\",
			"empty":                  "",
		},
		Time: time.Now().Add(-time.Hour).Truncate(time.Microsecond),
	}
	bare := broker.Message{Topic: e.topic} // ID and Time are filled in
	before := time.Now()
	e.enqueue(full, bare)

	c := e.claim(10, false)
	recs := c.Records()
	if len(recs) != 2 {
		t.Fatalf("claimed %d records, want 2", len(recs))
	}
	checkIDOrder(t, recs, "claim")
	got := recs[0]
	if got.Message.ID != full.ID || got.Message.Topic != full.Topic || got.Message.Key != full.Key {
		t.Errorf("message = %s/%s/%s, want %s/%s/%s", got.Message.ID, got.Message.Topic, got.Message.Key,
			full.ID, full.Topic, full.Key)
	}
	if !bytes.Equal(got.Message.Payload, full.Payload) {
		t.Errorf("payload = %x, want %x", got.Message.Payload, full.Payload)
	}
	if !maps.Equal(got.Message.Headers, full.Headers) {
		t.Errorf("headers = %v, want %v", got.Message.Headers, full.Headers)
	}
	if !got.Message.Time.Equal(full.Time) {
		t.Errorf("time = %v, want %v", got.Message.Time, full.Time)
	}
	if got.Status != outbox.StatusPending || got.Attempts != 0 || got.LastError != "" || got.Malformed != "" {
		t.Errorf("fresh record: status %q attempts %d last error %q malformed %q; want pending, 0, empty, empty",
			got.Status, got.Attempts, got.LastError, got.Malformed)
	}
	if got.EnqueuedAt.IsZero() {
		t.Errorf("EnqueuedAt is zero")
	}
	b := recs[1]
	if b.Message.ID == "" || b.Message.Time.IsZero() || b.Message.Key != "" || len(b.Message.Payload) != 0 || len(b.Message.Headers) != 0 {
		t.Errorf("bare message came back as %+v; want a filled ID and time, nothing else", b.Message)
	}
	if d := b.Message.Time.Sub(before); d < -time.Minute || d > time.Minute {
		t.Errorf("filled time %v is far from the enqueue time %v", b.Message.Time, before)
	}
	e.complete(c, outbox.Outcome{Published: ids(recs)})

	if recs := e.claim(10, false).Records(); len(recs) != 0 {
		t.Errorf("published rows claimed again: %v", payloads(recs))
	}

	err := e.h.Enqueue(e.ctx, broker.NewMessage(e.topic, []byte("good")), broker.Message{Payload: []byte("no topic")})
	if !errors.Is(err, broker.ErrEmptyTopic) {
		t.Errorf("enqueue with an empty topic: err = %v, want ErrEmptyTopic", err)
	}
	big := broker.NewMessage(e.topic, make([]byte, broker.DefaultMaxMessageBytes+1))
	if err := e.h.Enqueue(e.ctx, big); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Errorf("enqueue of an oversized message: err = %v, want ErrMessageTooLarge", err)
	}
	if recs := e.claim(10, false).Records(); len(recs) != 0 {
		t.Errorf("a refused enqueue wrote rows: %v", payloads(recs))
	}

	// Text a store cannot keep exactly is refused with ErrInvalidMessage,
	// whole batch and all; what a store accepts comes back byte for byte.
	for _, bad := range []func(*broker.Message){
		func(m *broker.Message) { m.Headers = map[string]string{"h": "a\xffb"} },
		func(m *broker.Message) { m.Headers = map[string]string{"a\xffb": "v"} },
		func(m *broker.Message) { m.Headers = map[string]string{"h": "nul\x00"} },
		func(m *broker.Message) { m.Key = "k\xfe" },
		func(m *broker.Message) { m.Topic = e.topic + "\xff" },
		func(m *broker.Message) { m.ID = "id\x00" },
	} {
		m := broker.NewMessage(e.topic, []byte("odd"))
		bad(&m)
		err := e.h.Enqueue(e.ctx, broker.NewMessage(e.topic, []byte("good")), m)
		if err != nil {
			if !errors.Is(err, broker.ErrInvalidMessage) {
				t.Errorf("enqueue of %+v: err = %v, want nil or ErrInvalidMessage", m, err)
			}
			if recs := e.claim(10, false).Records(); len(recs) != 0 {
				t.Errorf("a refused enqueue wrote rows: %v", payloads(recs))
			}
			continue
		}
		c := e.claim(10, false)
		recs := c.Records()
		if len(recs) != 2 || !reflect.DeepEqual(recs[1].Message.Headers, m.Headers) || recs[1].Message.Key != m.Key ||
			recs[1].Message.Topic != m.Topic || recs[1].Message.ID != m.ID {
			t.Errorf("enqueued %+v, claimed %+v: not stored exactly", m, recs)
		}
		e.complete(c, outbox.Outcome{Published: ids(recs)})
	}
}

// claimOrder: a claim returns, per key, a consecutive run from the key's
// oldest unpublished row, in ID order; the next claim continues each run.
func (s *storeSuite) claimOrder(t *testing.T) {
	e := s.newEnv(t)
	e.seq(10, "a", "b")
	e.seq(3, "")
	next := map[string]int{}
	total := 0
	for round := 0; ; round++ {
		c := e.claim(5, false)
		recs := c.Records()
		if len(recs) == 0 {
			break
		}
		if round > 30 {
			t.Fatal("claims do not make progress")
		}
		if len(recs) > 5 {
			t.Errorf("claim(limit 5) returned %d records", len(recs))
		}
		checkIDOrder(t, recs, "claim")
		for k, rs := range byKey(recs) {
			if k == "" {
				continue
			}
			for _, r := range rs {
				if seqOf(r) != next[k] {
					t.Fatalf("round %d: key %s: claimed seq %d, want %d (runs must start at the key's head and be consecutive)",
						round, k, seqOf(r), next[k])
				}
				next[k]++
			}
		}
		total += len(recs)
		e.complete(c, outbox.Outcome{Published: ids(recs)})
	}
	if total != 23 || next["a"] != 10 || next["b"] != 10 {
		t.Errorf("claimed %d rows (a: %d, b: %d); want 23 (10, 10)", total, next["a"], next["b"])
	}
}

// keyExclusive: while one claim holds rows of a key, no other claim gets
// any row of that key, not even rows beyond the first claim's limit. Rows
// without a key are shared out without overlap.
func (s *storeSuite) keyExclusive(t *testing.T) {
	e := s.newEnv(t)
	e.seq(10, "a", "b", "c")
	e.seq(10, "")
	other := e.h.Store
	if e.h.Open != nil {
		other = e.h.Open(t)
	}
	c1 := e.claim(5, false)
	r1 := c1.Records()
	if len(r1) == 0 {
		t.Fatal("first claim returned nothing")
	}
	c2 := e.claimFrom(other, 100, false)
	r2 := c2.Records()
	held := map[string]bool{}
	ids1 := map[int64]bool{}
	for _, r := range r1 {
		held[r.Message.Key] = r.Message.Key != ""
		ids1[r.ID] = true
	}
	for _, r := range r2 {
		if held[r.Message.Key] {
			t.Errorf("second claim got %s while the first claim holds key %q", r.Message.Payload, r.Message.Key)
		}
		if ids1[r.ID] {
			t.Errorf("row %d claimed twice", r.ID)
		}
	}
	if len(r1)+len(r2) == 0 || len(r2) == 0 {
		t.Errorf("second claim got nothing although unheld keys have rows")
	}
	e.release(c1)
	e.release(c2)
	if n := len(e.publishAll(false)); n != 40 {
		t.Errorf("after releasing both claims %d rows were claimable, want 40", n)
	}
}

// release: released rows, and rows of a completed claim that the outcome
// does not name, come back unchanged.
func (s *storeSuite) release(t *testing.T) {
	e := s.newEnv(t)
	e.seq(3, "a")
	c := e.claim(10, false)
	first := c.Records()
	e.release(c)
	c = e.claim(10, false)
	again := c.Records()
	if len(again) != 3 || fmt.Sprint(ids(first)) != fmt.Sprint(ids(again)) {
		t.Fatalf("after release claimed %v, want %v", ids(again), ids(first))
	}
	for _, r := range again {
		if r.Attempts != 0 || r.LastError != "" {
			t.Errorf("released row %d has attempts %d, last error %q", r.ID, r.Attempts, r.LastError)
		}
	}
	e.complete(c, outbox.Outcome{Published: ids(again[:1])})
	rest := e.claim(10, false).Records()
	if fmt.Sprint(ids(rest)) != fmt.Sprint(ids(again[1:])) {
		t.Errorf("after publishing the first row, claimed %v, want %v", ids(rest), ids(again[1:]))
	}
	if err := c.Release(e.ctx); err == nil {
		t.Errorf("Release after Complete returned nil, want an error")
	}
}

// claimDeadline: a claim that reports a deadline (outbox.ClaimDeadline)
// reports one that has not passed when Claim returns and does not change,
// and the claim completes before it.
func (s *storeSuite) claimDeadline(t *testing.T) {
	e := s.newEnv(t)
	e.seq(2, "a", "b")
	before := time.Now()
	c := e.claim(10, false)
	returned := time.Now()
	cd, ok := c.(outbox.ClaimDeadline)
	if !ok {
		t.Skip("the store's claims do not implement outbox.ClaimDeadline")
	}
	deadline, ok := cd.Deadline()
	if !ok {
		t.Skip("the store's claims have no deadline")
	}
	if !deadline.After(returned) {
		t.Fatalf("claim deadline %v after the Claim call began, already passed when it returned (%v after it began)",
			deadline.Sub(before), returned.Sub(before))
	}
	if again, ok := cd.Deadline(); !ok || !again.Equal(deadline) {
		t.Errorf("Deadline() changed from %v to %v, %v", deadline, again, ok)
	}
	recs := c.Records()
	if time.Now().After(deadline) {
		t.Skipf("the claim's deadline (%v after Claim began) passed before it could be completed", deadline.Sub(before))
	}
	e.complete(c, outbox.Outcome{Published: ids(recs)})
	if d, ok := cd.Deadline(); ok && !d.Equal(deadline) {
		t.Errorf("Deadline() changed after Complete from %v to %v", deadline, d)
	}
}

// retryBlocksKey: a failed row waits for its retry time, blocks the rest of
// its key meanwhile, and records the attempt and reason; other keys flow.
func (s *storeSuite) retryBlocksKey(t *testing.T) {
	e := s.newEnv(t)
	e.seq(2, "a", "b")
	c := e.claim(10, false)
	k := byKey(c.Records())
	if len(k["a"]) != 2 || len(k["b"]) != 2 {
		t.Fatalf("claimed %v, want a/0, a/1, b/0, b/1", payloads(c.Records()))
	}
	e.complete(c, outbox.Outcome{
		Published: []int64{k["b"][0].ID, k["b"][1].ID},
		Failed:    []outbox.Failure{{ID: k["a"][0].ID, Reason: "broker said no", RetryAfter: time.Hour}},
	})
	e.seq(1, "c")
	got := e.claim(10, false)
	if p := payloads(got.Records()); fmt.Sprint(p) != "[c/0]" {
		t.Errorf("with a/0 waiting for its retry, claimed %v, want [c/0]", p)
	}
	e.complete(got, outbox.Outcome{Published: ids(got.Records())})

	// A short retry: the row comes back with the attempt recorded, still
	// first of its key.
	e.seq(2, "d")
	c = e.claim(10, false)
	d := c.Records()
	e.complete(c, outbox.Outcome{Failed: []outbox.Failure{{ID: d[0].ID, Reason: "try later", RetryAfter: 50 * time.Millisecond}}})
	var back []outbox.Record
	Eventually(t, storeTimeout, "failed row claimable after its retry time", func() (bool, string) {
		c := e.claim(10, false)
		back = c.Records()
		e.release(c)
		return len(back) > 0, fmt.Sprint(payloads(back))
	})
	if fmt.Sprint(payloads(back)) != "[d/0 d/1]" {
		t.Fatalf("after the retry time claimed %v, want [d/0 d/1]", payloads(back))
	}
	if back[0].Attempts != 1 || back[0].LastError != "try later" {
		t.Errorf("retried row: attempts %d, last error %q; want 1, %q", back[0].Attempts, back[0].LastError, "try later")
	}
	if back[1].Attempts != 0 {
		t.Errorf("row behind the failed one has attempts %d, want 0", back[1].Attempts)
	}
}

// parkRedriveDelete: a parked row is listed with its reason; its key flows
// on (DeadBlocksKey false); redrive makes it pending with attempts reset;
// delete removes parked rows only, never pending or published ones.
func (s *storeSuite) parkRedriveDelete(t *testing.T) {
	e := s.newEnv(t)
	e.seq(3, "a")
	e.seq(1, "b")
	c := e.claim(10, false)
	k := byKey(c.Records())
	a0 := k["a"][0]
	e.complete(c, outbox.Outcome{
		Published: []int64{k["b"][0].ID},
		Failed:    []outbox.Failure{{ID: a0.ID, Reason: "poison", Park: true}},
	})
	parked, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{})
	if err != nil {
		t.Fatalf("parked: %v", err)
	}
	if len(parked) != 1 {
		t.Fatalf("parked = %v, want [a/0]", payloads(parked))
	}
	p := parked[0]
	if p.ID != a0.ID || p.Status != outbox.StatusDead || p.Attempts != 1 || p.LastError != "poison" || p.ParkedAt.IsZero() ||
		p.Message.ID != a0.Message.ID || !bytes.Equal(p.Message.Payload, a0.Message.Payload) {
		t.Errorf("parked record = %+v; want a/0 dead with 1 attempt, reason poison, a parking time", p)
	}
	if rest := payloads(e.publishAll(false)); fmt.Sprint(rest) != "[a/1 a/2]" {
		t.Errorf("with a/0 parked and DeadBlocksKey false, claimed %v, want [a/1 a/2]", rest)
	}
	n, err := e.h.Store.Redrive(e.ctx, a0.ID, k["a"][1].ID, -1)
	if err != nil || n != 1 {
		t.Fatalf("redrive(parked, published, unknown) = %d, %v; want 1, nil", n, err)
	}
	c = e.claim(10, false)
	r := c.Records()
	if len(r) != 1 || r[0].ID != a0.ID || r[0].Attempts != 0 {
		t.Fatalf("after redrive claimed %+v, want a/0 with attempts 0", r)
	}
	e.complete(c, outbox.Outcome{Failed: []outbox.Failure{{ID: a0.ID, Reason: "still poison", Park: true}}})
	e.seq(1, "c")
	pending := e.claim(10, false)
	c0 := pending.Records()
	e.release(pending)
	if n, err := e.h.Store.Delete(e.ctx, a0.ID, c0[0].ID, k["a"][1].ID, k["b"][0].ID); err != nil || n != 1 {
		t.Fatalf("delete(parked, pending, published, published) = %d, %v; want 1, nil", n, err)
	}
	if parked, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{}); err != nil || len(parked) != 0 {
		t.Errorf("after delete, parked = %v, %v; want none", payloads(parked), err)
	}
	if rest := payloads(e.publishAll(false)); fmt.Sprint(rest) != "[c/0]" {
		t.Errorf("delete removed a pending row: claimable %v, want [c/0]", rest)
	}
	if n, err := e.h.Store.Redrive(e.ctx); n != 0 || err != nil {
		t.Errorf("redrive() = %d, %v; want 0, nil", n, err)
	}
	// Paging.
	e.seq(5, "p")
	c = e.claim(10, false)
	var fails []outbox.Failure
	for i, r := range c.Records() {
		if i == 0 {
			fails = append(fails, outbox.Failure{ID: r.ID, Reason: "x", Park: true})
		}
	}
	e.complete(c, outbox.Outcome{Failed: fails})
	e.seq(1, "q")
	c = e.claim(10, false)
	e.complete(c, outbox.Outcome{Failed: []outbox.Failure{{ID: c.Records()[0].ID, Reason: "y", Park: true}}})
	page1, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{Limit: 1})
	if err != nil || len(page1) != 1 {
		t.Fatalf("parked page 1 = %v, %v", payloads(page1), err)
	}
	page2, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{AfterID: page1[0].ID, Limit: 10})
	if err != nil || len(page2) != 1 || page2[0].ID <= page1[0].ID {
		t.Errorf("parked page 2 = %v, %v; want the second parked row", payloads(page2), err)
	}
}

// deadBlocksKey: with DeadBlocksKey, nothing after a parked row of its key
// is claimed until the row is redriven, and then it goes first.
func (s *storeSuite) deadBlocksKey(t *testing.T) {
	e := s.newEnv(t)
	e.seq(2, "a", "b")
	c := e.claim(10, true)
	k := byKey(c.Records())
	e.complete(c, outbox.Outcome{
		Published: ids(k["b"]),
		Failed:    []outbox.Failure{{ID: k["a"][0].ID, Reason: "poison", Park: true}},
	})
	e.seq(1, "c")
	e.enqueue(SeqMessage(e.topic, "a", 2))
	c = e.claim(10, true)
	if p := payloads(c.Records()); fmt.Sprint(p) != "[c/0]" {
		t.Errorf("with a/0 parked and DeadBlocksKey, claimed %v, want [c/0]", p)
	}
	e.complete(c, outbox.Outcome{Published: ids(c.Records())})
	if n, err := e.h.Store.Redrive(e.ctx, k["a"][0].ID); err != nil || n != 1 {
		t.Fatalf("redrive = %d, %v", n, err)
	}
	if p := payloads(e.publishAll(true)); fmt.Sprint(p) != "[a/0 a/1 a/2]" {
		t.Errorf("after redrive claimed %v, want [a/0 a/1 a/2]", p)
	}
}

// cleanup: Cleanup deletes published rows older than the cut-off, at most
// limit per call, and never pending or parked rows; Outcome.Delete deletes
// rows instead of marking them.
func (s *storeSuite) cleanup(t *testing.T) {
	e := s.newEnv(t)
	e.seq(5, "a")
	e.seq(1, "b", "c")
	c := e.claim(10, false)
	k := byKey(c.Records())
	e.complete(c, outbox.Outcome{
		Published: []int64{k["a"][0].ID, k["a"][1].ID, k["a"][2].ID},
		Failed:    []outbox.Failure{{ID: k["b"][0].ID, Reason: "bad", Park: true}},
	})
	if n, err := e.h.Store.Cleanup(e.ctx, time.Now().Add(-time.Hour), 10); err != nil || n != 0 {
		t.Errorf("cleanup of rows published before an hour ago = %d, %v; want 0", n, err)
	}
	future := time.Now().Add(time.Hour)
	if n, err := e.h.Store.Cleanup(e.ctx, future, 2); err != nil || n != 2 {
		t.Errorf("cleanup(limit 2) = %d, %v; want 2", n, err)
	}
	if n, err := e.h.Store.Cleanup(e.ctx, future, 2); err != nil || n != 1 {
		t.Errorf("second cleanup(limit 2) = %d, %v; want 1", n, err)
	}
	if n, err := e.h.Store.Cleanup(e.ctx, future, 2); err != nil || n != 0 {
		t.Errorf("third cleanup = %d, %v; want 0", n, err)
	}
	if parked, err := e.h.Store.Parked(e.ctx, outbox.ParkedQuery{}); err != nil || len(parked) != 1 {
		t.Errorf("cleanup touched parked rows: %v, %v", payloads(parked), err)
	}
	c = e.claim(10, false)
	if p := payloads(c.Records()); fmt.Sprint(p) != "[a/3 a/4 c/0]" {
		t.Errorf("after cleanup claimed %v, want [a/3 a/4 c/0]", p)
	}
	e.complete(c, outbox.Outcome{Published: ids(c.Records()), Delete: true})
	st, err := e.h.Store.Stats(e.ctx)
	if err != nil || st.Pending != 0 || st.Dead != 1 {
		t.Errorf("stats after delete-on-publish = %+v, %v; want 0 pending, 1 dead", st, err)
	}
	if n, err := e.h.Store.Cleanup(e.ctx, future, 10); err != nil || n != 0 {
		t.Errorf("cleanup after delete-on-publish = %d, %v; want 0 (rows already gone)", n, err)
	}
}

// stats: pending and parked counts and the oldest pending row.
func (s *storeSuite) stats(t *testing.T) {
	e := s.newEnv(t)
	st, err := e.h.Store.Stats(e.ctx)
	if err != nil || st.Pending != 0 || st.Dead != 0 || !st.OldestPending.IsZero() {
		t.Fatalf("empty outbox stats = %+v, %v", st, err)
	}
	e.seq(3, "a")
	st, err = e.h.Store.Stats(e.ctx)
	if err != nil || st.Pending != 3 || st.Dead != 0 || st.OldestPending.IsZero() {
		t.Fatalf("stats with 3 pending = %+v, %v", st, err)
	}
	if d := time.Since(st.OldestPending); d < -time.Hour || d > time.Hour {
		t.Errorf("oldest pending %v is far from now", st.OldestPending)
	}
	c := e.claim(10, false)
	r := c.Records()
	e.complete(c, outbox.Outcome{Published: []int64{r[0].ID}, Failed: []outbox.Failure{{ID: r[1].ID, Reason: "x", Park: true}}})
	st, err = e.h.Store.Stats(e.ctx)
	if err != nil || st.Pending != 1 || st.Dead != 1 {
		t.Errorf("stats after one published, one parked = %+v, %v; want 1 pending, 1 dead", st, err)
	}
}

// rollback: rows of a rolled-back transaction never appear; rows of an
// open transaction appear when it commits.
func (s *storeSuite) rollback(t *testing.T) {
	e := s.newEnv(t)
	if e.h.Begin == nil {
		t.Skip("Harness.Begin not set")
	}
	tx, err := e.h.Begin(e.ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if err := tx.Enqueue(e.ctx, SeqMessage(e.topic, "a", 0)); err != nil {
		t.Fatalf("enqueue in tx: %v", err)
	}
	if err := tx.Rollback(e.ctx); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	tx, err = e.h.Begin(e.ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	if err := tx.Enqueue(e.ctx, SeqMessage(e.topic, "b", 0)); err != nil {
		t.Fatalf("enqueue in tx: %v", err)
	}
	if p := payloads(e.publishAll(false)); len(p) != 0 {
		t.Errorf("before commit claimed %v, want nothing", p)
	}
	if err := tx.Commit(e.ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if p := payloads(e.publishAll(false)); fmt.Sprint(p) != "[b/0]" {
		t.Errorf("after rollback of a/0 and commit of b/0 claimed %v, want [b/0]", p)
	}
}

// lateCommit: a transaction that wrote its row first (lower ID) but commits
// after others is not skipped: its row is claimed once it commits, and from
// then on the key's rows go in ID order.
func (s *storeSuite) lateCommit(t *testing.T) {
	e := s.newEnv(t)
	if e.h.Begin == nil {
		t.Skip("Harness.Begin not set")
	}
	late, err := e.h.Begin(e.ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	lateA := SeqMessage(e.topic, "a", 100)
	lateB := SeqMessage(e.topic, "b", 100)
	if err := late.Enqueue(e.ctx, lateA, lateB); err != nil {
		t.Fatalf("enqueue in the late transaction: %v", err)
	}
	t.Cleanup(func() { _ = late.Rollback(context.Background()) })
	e.seq(2, "a", "b", "c")
	c := e.claim(100, false)
	if p := payloads(c.Records()); fmt.Sprint(p) != "[a/0 b/0 c/0 a/1 b/1 c/1]" {
		t.Fatalf("with the late transaction open claimed %v, want the committed rows only", p)
	}
	// Publish a's rows and b's first.
	k := byKey(c.Records())
	e.complete(c, outbox.Outcome{Published: []int64{k["a"][0].ID, k["a"][1].ID, k["b"][0].ID, k["c"][0].ID, k["c"][1].ID}})
	if err := late.Commit(e.ctx); err != nil {
		t.Fatalf("commit the late transaction: %v", err)
	}
	recs := e.publishAll(false)
	got := byKey(recs)
	if p := payloads(got["a"]); fmt.Sprint(p) != "[a/100]" {
		t.Errorf("key a after the late commit: claimed %v, want [a/100]", p)
	}
	// b/100 has a lower ID than b/1: now both are visible, ID order rules.
	if p := payloads(got["b"]); fmt.Sprint(p) != "[b/100 b/1]" {
		t.Errorf("key b after the late commit: claimed %v, want [b/100 b/1] (ID order)", p)
	}
	if got["a"] != nil && got["a"][0].ID >= k["a"][0].ID {
		t.Errorf("the late row has ID %d, not lower than %d: the case did not exercise a late commit", got["a"][0].ID, k["a"][0].ID)
	}
}

// crashReleases: when the session holding a claim dies, its rows are
// released unchanged and the dead claim cannot complete.
func (s *storeSuite) crashReleases(t *testing.T) {
	e := s.newEnv(t)
	if e.h.Crash == nil {
		t.Skip("Harness.Crash not set")
	}
	victim := e.h.Store
	if e.h.Open != nil {
		victim = e.h.Open(t)
	}
	e.seq(3, "a", "b")
	c := e.claimFrom(victim, 100, false)
	held := c.Records()
	if len(held) != 6 {
		t.Fatalf("claimed %d rows, want 6", len(held))
	}
	if err := e.h.Crash(e.ctx, victim); err != nil {
		t.Fatalf("crash: %v", err)
	}
	if err := c.Complete(e.ctx, outbox.Outcome{Published: ids(held)}); err == nil {
		t.Errorf("a claim whose session died completed without error")
	}
	var again []outbox.Record
	Eventually(t, storeTimeout, "rows of a crashed claim are released", func() (bool, string) {
		c, err := e.h.Store.Claim(e.ctx, outbox.ClaimRequest{Limit: 100})
		if err != nil {
			return false, err.Error() // a connection of the pool may have died too
		}
		again = c.Records()
		_ = c.Release(e.ctx)
		return len(again) == 6, fmt.Sprint(payloads(again))
	})
	for _, r := range again {
		if r.Attempts != 0 || r.Status != outbox.StatusPending {
			t.Errorf("row %s after the crash: attempts %d, status %s", r.Message.Payload, r.Attempts, r.Status)
		}
	}
}

// claimRace: many claimers race over keys while writers keep adding rows;
// each claimer publishes its rows per key up to a random failure. Never do
// two claims hold one key, every run starts at its key's next row, and at
// the end every row was published exactly once, in per-key order.
func (s *storeSuite) claimRace(t *testing.T, keys, perKey int) {
	e := s.newEnv(t)
	const (
		claimers = 6
		writers  = 4
	)
	var (
		mu        sync.Mutex
		held      = map[string]int{} // key -> claimer holding it
		next      = map[string]int{} // key -> next seq to publish
		published = map[string]int{} // message ID -> times published
		failures  []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 10 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	ctx := e.ctx
	var wg sync.WaitGroup
	// Writers: each owns keys and enqueues their rows in seq order, a few
	// rows per transaction.
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			seqs := map[string]int{}
			var mine []string
			for k := w; k < keys; k += writers {
				mine = append(mine, "k"+strconv.Itoa(k))
			}
			for len(mine) > 0 {
				var msgs []broker.Message
				for range 1 + rng.IntN(4) {
					i := rng.IntN(len(mine))
					k := mine[i]
					msgs = append(msgs, SeqMessage(e.topic, k, seqs[k]))
					if seqs[k]++; seqs[k] == perKey {
						mine = append(mine[:i], mine[i+1:]...)
						if len(mine) == 0 {
							break
						}
					}
				}
				if w == 0 {
					for range rng.IntN(3) {
						msgs = append(msgs, SeqMessage(e.topic, "", 0))
					}
				}
				if err := e.h.Enqueue(ctx, msgs...); err != nil {
					fail("enqueue: %v", err)
					return
				}
			}
		})
	}
	total := keys * perKey
	var emptyPublished sync.Map
	var done sync.WaitGroup
	stop := make(chan struct{})
	for cl := range claimers {
		store := e.h.Store
		if e.h.Open != nil {
			store = e.h.Open(t)
		}
		done.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(cl), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := store.Claim(ctx, outbox.ClaimRequest{Limit: 1 + rng.IntN(40)})
				if err != nil {
					fail("claimer %d: claim: %v", cl, err)
					return
				}
				recs := c.Records()
				if len(recs) == 0 {
					_ = c.Release(ctx)
					time.Sleep(time.Millisecond)
					continue
				}
				var out outbox.Outcome
				mu.Lock()
				runs := byKey(recs)
				for k, rs := range runs {
					if k == "" {
						continue
					}
					if h, ok := held[k]; ok {
						failures = append(failures, fmt.Sprintf("claimer %d got key %s held by claimer %d", cl, k, h))
					}
					held[k] = cl
					for i, r := range rs {
						if seqOf(r) != next[k]+i {
							failures = append(failures, fmt.Sprintf("claimer %d: key %s: run starts %v, next is %d",
								cl, k, payloads(rs), next[k]))
							break
						}
					}
				}
				mu.Unlock()
				time.Sleep(time.Duration(rng.IntN(500)) * time.Microsecond)
				release := rng.IntN(10) == 0
				mu.Lock()
				for k, rs := range runs {
					if k == "" {
						if !release {
							for _, r := range rs {
								out.Published = append(out.Published, r.ID)
								if _, dup := emptyPublished.LoadOrStore(r.Message.ID, true); dup {
									failures = append(failures, "row without key published twice")
								}
							}
						}
						continue
					}
					delete(held, k)
					if release {
						continue
					}
					// Publish a prefix; maybe fail the row after it.
					n := len(rs)
					if rng.IntN(4) == 0 {
						n = rng.IntN(len(rs))
						out.Failed = append(out.Failed, outbox.Failure{ID: rs[n].ID, Reason: "random", RetryAfter: time.Duration(2+rng.IntN(20)) * time.Millisecond})
					}
					for _, r := range rs[:n] {
						out.Published = append(out.Published, r.ID)
						published[r.Message.ID]++
					}
					next[k] += n
				}
				mu.Unlock()
				if release {
					err = c.Release(ctx)
				} else {
					err = c.Complete(ctx, out)
				}
				if err != nil {
					fail("claimer %d: complete: %v", cl, err)
					return
				}
			}
		})
	}
	wg.Wait()
	deadline := time.Now().Add(storeTimeout)
	for {
		mu.Lock()
		n := len(published)
		f := len(failures)
		mu.Unlock()
		empties := 0
		emptyPublished.Range(func(any, any) bool { empties++; return true })
		if f > 0 || (n == total && empties > 0) {
			break
		}
		if time.Now().After(deadline) {
			close(stop)
			done.Wait()
			t.Fatalf("published %d of %d keyed rows after %v", n, total, storeTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Let the claimers drain the rows without a key too.
	Eventually(t, storeTimeout, "outbox empty", func() (bool, string) {
		st, err := e.h.Store.Stats(ctx)
		return err == nil && st.Pending == 0, fmt.Sprint(st, err)
	})
	close(stop)
	done.Wait()
	mu.Lock()
	defer mu.Unlock()
	for _, f := range failures {
		t.Error(f)
	}
	for id, n := range published {
		if n != 1 {
			t.Errorf("message %s published %d times", id, n)
		}
	}
	for k := range keys {
		if got := next["k"+strconv.Itoa(k)]; got != perKey {
			t.Errorf("key k%d: published %d rows, want %d", k, got, perKey)
		}
	}
}
