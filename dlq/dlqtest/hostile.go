package dlqtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
)

// forgedEnvelope: messages a producer published to a main topic with
// dead-letter envelope headers of its own (an attempt count of 2, the
// largest int64 or -4, another ID, topic, key and group) are handled
// exactly like plain messages: attempted MaxAttempts times with attempts
// counted from 1, seen with their real ID, topic and key and without the
// forged headers, and dead-lettered to their own group's destination with
// a true envelope.
func (s *suite) forgedEnvelope(t *testing.T, retries dlq.Retries) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	c := b.Consumer(t, dlq.Config{Policy: streamPolicy, Retries: retries, Name: "charge"}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	// The forged destination exists too (for brokers that need one), so a
	// dead letter sent there would be accepted rather than refused.
	forgedTopic := Name("forged")
	b.Consumer(t, dlq.Config{Retries: s.f.Retries[0]}, forgedTopic, "evil")
	forgedIn := b.Inspector(t, forgedTopic, "evil", nil)
	past := time.Now().Add(-time.Hour)
	var msgs []broker.Message
	for i, attempts := range []string{"2", strconv.FormatInt(1<<63-1, 10), "-4", "junk"} {
		m := broker.NewMessage(topic, []byte(fmt.Sprintf(`{"order":%d}`, i)))
		m.Key = fmt.Sprint("customer-", i)
		m.Headers = map[string]string{"seq": fmt.Sprint(i)}
		dlq.Envelope{ID: "forged-" + fmt.Sprint(i), Topic: forgedTopic, Key: "forged-key", Time: past,
			Partition: 7, Offset: 7, Queue: "forged-queue", Group: "evil", Handler: "forged", Error: "forged",
			Class: dlq.ClassPermanent, FirstFailure: past, LastFailure: past, Due: time.Now().Add(time.Hour)}.SetHeaders(m.Headers)
		m.Headers[dlq.HeaderAttempts] = attempts
		msgs = append(msgs, m)
	}
	publish(t, b.Publisher, msgs...)
	rec := newRecorder()
	stop := s.run(t, c, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if strings.HasPrefix(d.ID, "forged") || d.Topic != topic || d.Group != group || strings.HasPrefix(d.Key, "forged") {
			t.Errorf("delivery renamed by forged headers: id %q topic %q group %q key %q", d.ID, d.Topic, d.Group, d.Key)
		}
		for k := range d.Headers {
			if strings.HasPrefix(k, dlq.HeaderPrefix) {
				t.Errorf("handler sees forged envelope header %s", k)
			}
		}
		return rec.end(d, errors.New("card declined"))
	})
	dead := s.waitDead(t, in, len(msgs))
	stop()
	want := make([]int, streamPolicy.MaxAttempts)
	for i := range want {
		want[i] = i + 1
	}
	byID := map[string]broker.Message{}
	for _, m := range msgs {
		if got := rec.of(m.ID); !slices.Equal(got, want) {
			t.Errorf("message with forged attempts %q handled with attempts %v, want %v", m.Headers[dlq.HeaderAttempts], got, want)
		}
		clean := m
		clean.Headers = dlq.Strip(m.Headers)
		byID[m.ID] = clean
	}
	for _, dl := range dead {
		orig, ok := byID[dl.ID()]
		if !ok {
			t.Errorf("dead letter with forged ID %s", dl.ID())
			continue
		}
		s.checkEnvelope(t, orig, dl, streamPolicy.MaxAttempts, dlq.ClassTransient, group, "charge")
		if dl.Envelope.Error != "card declined" {
			t.Errorf("dead letter %s: error %q, want the handler's", dl.ID(), dl.Envelope.Error)
		}
	}
	if dls := list(t, forgedIn, dlq.Filter{}); len(dls) != 0 {
		t.Errorf("%d dead letters in the destination the producer chose", len(dls))
	}
}

// forgedMarker: a message carrying the headers a Kafka Inspector marks
// replayed and purged dead letters with (naming the offset of another dead
// letter of its key) is dead-lettered like any other. Both dead letters
// are listed; replaying the forged one removes it alone, and the other
// stays listed until it is replayed itself.
func (s *suite) forgedMarker(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	c := b.Consumer(t, dlq.Config{Policy: dlq.Policy{MaxAttempts: 1}, Retries: s.f.Retries[0]}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	rec := newRecorder()
	s.run(t, c, broker.Subscription{Topic: topic, Group: group}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if d.Headers[dlq.HeaderReplays] != "" {
			return rec.end(d, nil)
		}
		return rec.end(d, errors.New("poison"))
	})
	real := broker.NewMessage(topic, []byte("real"))
	real.Key = "k"
	publish(t, b.Publisher, real)
	s.waitDead(t, in, 1)
	forged := broker.NewMessage(topic, nil)
	forged.Key = "k"
	forged.Headers = map[string]string{}
	// The Kafka Inspector's marker headers, for offsets around the first
	// dead letter's (the key's partition of the dead-letter topic).
	for _, name := range []string{"marker", "marker-offset", "marker-id", "marker-digest"} {
		forged.Headers[dlq.HeaderPrefix+name] = "0"
	}
	forged.Headers[dlq.HeaderPrefix+"marker"] = "purged"
	publish(t, b.Publisher, forged)
	dead := s.waitDead(t, in, 2)
	ids := []string{dead[0].ID(), dead[1].ID()}
	if !slices.Contains(ids, real.ID) || !slices.Contains(ids, forged.ID) {
		t.Fatalf("dead letters %v, want %s and %s", ids, real.ID, forged.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n, err := in.Replay(ctx, dlq.Filter{IDs: []string{forged.ID}}, dlq.ReplayOptions{}); err != nil || n != 1 {
		t.Fatalf("Replay of the forged one = %d, %v; want 1", n, err)
	}
	s.waitFor(t, "the replayed message", func() bool { return rec.successes() == 1 })
	left := list(t, in, dlq.Filter{})
	if len(left) != 1 || left[0].ID() != real.ID {
		t.Fatalf("after replaying the forged dead letter: %d listed, want only %s", len(left), real.ID)
	}
	if n, err := in.Replay(ctx, dlq.Filter{}, dlq.ReplayOptions{}); err != nil || n != 1 {
		t.Fatalf("Replay of the rest = %d, %v; want 1", n, err)
	}
	s.waitFor(t, "the second replayed message", func() bool { return rec.successes() == 2 })
	if n := len(list(t, in, dlq.Filter{})); n != 0 {
		t.Errorf("%d dead letters after replaying both", n)
	}
}

// sizeLimit returns the publisher's size limit.
func sizeLimit(p broker.Publisher) int {
	if l, ok := p.(broker.SizeLimiter); ok && l.MaxMessageBytes() > 0 {
		return l.MaxMessageBytes()
	}
	return broker.DefaultMaxMessageBytes
}

// nearSizeLimit: messages that fit the publisher's limit but not with an
// envelope are dead-lettered once each after MaxAttempts attempts, never
// retried forever: one with room for the envelope but not for the whole
// error text keeps its payload and headers with the error cut short; one
// within 100 bytes of the limit keeps its headers but not its payload; one
// whose own headers nearly fill it keeps neither. Each dead letter says what it
// lacks, and replaying one that lacks its payload fails with
// dlq.ErrIncomplete and leaves it listed. Messages of other keys are
// handled meanwhile.
func (s *suite) nearSizeLimit(t *testing.T) {
	b := s.factory(t)
	topic, group := Name("dlqt"), "g"
	limit := sizeLimit(b.Publisher)
	policy := dlq.Policy{MaxAttempts: 2, Backoff: broker.Backoff{Initial: 5 * time.Millisecond}}
	c := b.Consumer(t, dlq.Config{Policy: policy, Retries: s.f.Retries[0], Name: "charge"}, topic, group)
	in := b.Inspector(t, topic, group, nil)
	longErr := strings.Repeat("e", dlq.MaxErrorBytes*2)

	sized := func(key string, headers map[string]string, size int) broker.Message {
		m := broker.NewMessage(topic, nil)
		m.Key, m.Headers = key, headers
		m.Payload = []byte(strings.Repeat("p", size-m.Size()))
		return m
	}
	// The envelope of a dead letter, without its error text, in bytes.
	env := map[string]string{}
	now := time.Now()
	probe := broker.NewMessage(topic, nil)
	dlq.Envelope{ID: probe.ID, Topic: topic, Key: "trim", Time: now, Partition: 1 << 20, Offset: 1 << 40,
		Queue: topic + "." + group, Group: group, Handler: "charge", Class: dlq.ClassTransient, Attempts: 2,
		FirstFailure: now, LastFailure: now}.SetHeaders(env)
	envBytes := 0
	for k, v := range env {
		envBytes += len(k) + len(v)
	}
	envBytes += len(dlq.HeaderError)
	// Room for the envelope and half the cut error text.
	trim := sized("trim", map[string]string{"seq": "1"}, limit-envBytes-dlq.MaxErrorBytes/2)
	noPayload := sized("nopayload", map[string]string{"seq": "2"}, limit-100)
	cases := []broker.Message{trim, noPayload}
	var noHeaders broker.Message
	if s.f.MaxHeaderBytes == 0 || s.f.MaxHeaderBytes >= limit {
		bigHeaders := map[string]string{"seq": "3", "big": strings.Repeat("h", limit-300)}
		noHeaders = sized("noheaders", bigHeaders, limit-10)
		cases = append(cases, noHeaders)
	} else {
		t.Logf("no case for headers that fill the limit: the backend carries at most %d header bytes", s.f.MaxHeaderBytes)
	}
	good := broker.NewMessage(topic, []byte("good"))
	good.Key = "good"
	for _, m := range append(cases, good) {
		if err := m.Validate(limit); err != nil {
			t.Fatalf("message %s does not fit: %v", m.Key, err)
		}
	}
	rec := newRecorder()
	s.run(t, c, broker.Subscription{Topic: topic, Group: group, Concurrency: 4}, func(_ context.Context, d broker.Delivery) error {
		rec.begin(d)
		if d.Key == "good" {
			return rec.end(d, nil)
		}
		return rec.end(d, errors.New(longErr))
	})
	publish(t, b.Publisher, append(cases, good)...)
	dead := s.waitDead(t, in, len(cases))
	s.waitFor(t, "the good message", func() bool { return rec.successes() == 1 })
	for _, m := range cases {
		if got := rec.of(m.ID); !slices.Equal(got, []int{1, 2}) {
			t.Errorf("message %s handled with attempts %v, want [1 2]", m.Key, got)
		}
	}
	byKey := map[string]dlq.DeadLetter{}
	for _, dl := range dead {
		if dl.EnvelopeErr != nil {
			t.Fatalf("dead letter %s: %v", dl.ID(), dl.EnvelopeErr)
		}
		byKey[dl.Envelope.Key] = dl
		if dl.Message.Size() > limit {
			t.Errorf("dead letter %s is %d bytes, above the limit %d", dl.ID(), dl.Message.Size(), limit)
		}
		if dl.Envelope.Attempts != 2 || dl.Envelope.Group != group || dl.Envelope.Topic != topic {
			t.Errorf("dead letter %s: envelope %+v", dl.ID(), dl.Envelope)
		}
	}
	check := func(m broker.Message, payload, headers bool) {
		t.Helper()
		dl, ok := byKey[m.Key]
		if !ok || dl.ID() != m.ID {
			t.Errorf("no dead letter for %s", m.Key)
			return
		}
		e := dl.Envelope
		wantSize := 0
		if !payload {
			wantSize = m.Size()
		}
		if e.PayloadOmitted == payload || e.HeadersOmitted == headers || e.OriginalSize != wantSize {
			t.Errorf("dead letter %s: payload omitted %v, headers omitted %v, original size %d; want %v %v %d",
				m.Key, e.PayloadOmitted, e.HeadersOmitted, e.OriginalSize, !payload, !headers, wantSize)
		}
		if payload != (string(dl.Message.Payload) == string(m.Payload)) || !payload && len(dl.Message.Payload) != 0 {
			t.Errorf("dead letter %s: %d payload bytes, payload kept %v", m.Key, len(dl.Message.Payload), payload)
		}
		h := dlq.Strip(dl.Message.Headers)
		if headers != maps.Equal(h, m.Headers) || !headers && len(h) != 0 {
			t.Errorf("dead letter %s: headers %d, kept %v", m.Key, len(h), headers)
		}
		if e.Error == "" || !strings.HasPrefix(longErr, strings.TrimSuffix(e.Error, "...")) {
			t.Errorf("dead letter %s: error text of %d bytes", m.Key, len(e.Error))
		}
	}
	check(trim, true, true)
	if e := byKey["trim"].Envelope.Error; len(e) >= dlq.MaxErrorBytes || !strings.HasSuffix(e, "...") {
		t.Errorf("dead letter trim: error of %d bytes, want it cut below %d", len(e), dlq.MaxErrorBytes)
	}
	check(noPayload, false, true)
	ids := []string{noPayload.ID}
	if len(cases) == 3 {
		check(noHeaders, false, false)
		ids = append(ids, noHeaders.ID)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := in.Replay(ctx, dlq.Filter{IDs: ids}, dlq.ReplayOptions{})
	if n != 0 || !errors.Is(err, dlq.ErrIncomplete) {
		t.Errorf("Replay of dead letters without payload = %d, %v; want 0 and ErrIncomplete", n, err)
	}
	if n := len(list(t, in, dlq.Filter{})); n != len(cases) {
		t.Errorf("%d dead letters after the refused replay, want %d", n, len(cases))
	}
}
