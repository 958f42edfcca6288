package brokertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

// Limits declares the protocol limits an adapter enforces when a message is
// published: a message beyond one is refused by Publish, before anything of
// the call is sent, with an error matching broker.ErrInvalidMessage. A zero
// field declares no such limit, and its check is skipped.
type Limits struct {
	// MaxNameBytes is the longest topic, key, message ID and header name,
	// in bytes.
	MaxNameBytes int
	// UTF8Topic: a topic must be valid UTF-8.
	UTF8Topic bool
	// MaxHeaders is the largest number of headers a message may carry.
	MaxHeaders int
}

// Injection names a message a hostile or foreign producer can put on the
// broker by its own protocol, bypassing the adapter's publisher, for
// Backend.Inject.
type Injection int

const (
	// InjectMissingID is a message without a message ID. The subscriber
	// must give it a non-empty ID that stays the same when it is
	// redelivered.
	InjectMissingID Injection = iota
	// InjectForgedAttempt is a message carrying the broker's own retry
	// metadata (RabbitMQ's x-death and x-delivery-count), forged with
	// absurd counts. Its first delivery must have Attempt 1 and its topic
	// and key must be the ones it was published with.
	InjectForgedAttempt
	// InjectUndecodable is a message the adapter's client library cannot
	// decode (RabbitMQ: a header table of more than 8,192 entries). The
	// subscriber must skip or dead-letter it without handing it to the
	// handler, keep its connection, and go on with the next message.
	InjectUndecodable
)

func (k Injection) String() string {
	switch k {
	case InjectMissingID:
		return "missing ID"
	case InjectForgedAttempt:
		return "forged attempt"
	case InjectUndecodable:
		return "undecodable"
	}
	return fmt.Sprintf("Injection(%d)", int(k))
}

// hostile: protocol-limit violations are refused up front with
// broker.ErrInvalidMessage and nothing of their call is sent; messages a
// raw producer injects (no ID, forged attempt counts, undecodable) are
// delivered with a stable fallback ID, with Attempt 1 and their own topic
// and key, or skipped, without stalling the messages of their key behind
// them; meanwhile a bystander publishing and consuming another topic on the
// same publisher and subscriber sees no error, no loss and no duplicate.
func (s *suite) hostile(t *testing.T) {
	e, groups := s.newEnv(t, 1)
	if s.f.Limits == (Limits{}) && e.b.Inject == nil {
		t.Skip("the adapter declares no protocol limits (Features.Limits) and no raw producer (Backend.Inject)")
	}
	by := UniqueName(t, "by")
	byGroup := UniqueName(t, "byg")
	e.setup(by, byGroup)
	ctx, cancel := context.WithTimeout(context.Background(), e.f.Timeout)
	defer cancel()

	// The bystander.
	byTally := newTally(0)
	e.subscribe(broker.Subscription{Topic: by, Group: byGroup}, func(_ context.Context, d broker.Delivery) error {
		byTally.add(d)
		return nil
	})
	var byMu sync.Mutex
	var bySent []string
	var byErr error
	stop := make(chan struct{})
	byDone := make(chan struct{})
	go func() {
		defer close(byDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := SeqMessage(by, fmt.Sprint("b", i%3), i)
			if err := e.b.Publisher.Publish(ctx, m); err != nil {
				byMu.Lock()
				byErr = err
				byMu.Unlock()
				return
			}
			byMu.Lock()
			bySent = append(bySent, m.ID)
			byMu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()

	// Protocol limits.
	var refused []string
	for name, bad := range LimitPoison(e.topic, s.f.Limits) {
		good := broker.NewMessage(e.topic, []byte("batch-mate of "+name))
		refused = append(refused, string(good.Payload), string(bad.Payload))
		if err := e.b.Publisher.Publish(ctx, good, bad); !errors.Is(err, broker.ErrInvalidMessage) {
			t.Errorf("publish of a message with %s: err = %v, want ErrInvalidMessage", name, err)
		}
	}

	// Injections, on one key between two good messages.
	const key = "hostile"
	first := SeqMessage(e.topic, key, 0)
	first.Payload = []byte("good-first")
	e.publish(first)
	injected := map[Injection]bool{}
	if e.b.Inject != nil {
		for _, k := range []Injection{InjectMissingID, InjectForgedAttempt, InjectUndecodable} {
			err := e.b.Inject(ctx, e.topic, key, []byte("injected "+k.String()), k)
			switch {
			case errors.Is(err, errors.ErrUnsupported):
				t.Logf("injection %v: not supported by the adapter", k)
			case err != nil:
				t.Fatalf("inject %v: %v", k, err)
			default:
				injected[k] = true
			}
		}
	}
	last := SeqMessage(e.topic, key, 1)
	last.Payload = []byte("good-last")
	e.publish(last)

	type seen struct {
		d     broker.Delivery
		count int
	}
	var mu sync.Mutex
	byPayload := map[string]*seen{}
	var idsOfMissing []string
	lastSeen := make(chan struct{})
	e.subscribe(broker.Subscription{Topic: e.topic, Group: groups[0]}, func(_ context.Context, d broker.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		p := string(d.Payload)
		sn := byPayload[p]
		if sn == nil {
			sn = &seen{d: d}
			byPayload[p] = sn
		}
		sn.count++
		if p == "injected "+InjectMissingID.String() {
			idsOfMissing = append(idsOfMissing, d.ID)
			if len(idsOfMissing) == 1 {
				return errors.New("fail once, to see the ID of the redelivery")
			}
		}
		if p == "good-last" && sn.count == 1 {
			close(lastSeen)
		}
		return nil
	})
	select {
	case <-lastSeen:
	case <-time.After(e.f.Timeout):
		mu.Lock()
		got := make([]string, 0, len(byPayload))
		for p := range byPayload {
			got = append(got, p)
		}
		mu.Unlock()
		t.Fatalf("the good message after the injected ones was not delivered within %v; delivered: %q", e.f.Timeout, got)
	}
	close(stop)
	<-byDone
	byMu.Lock()
	if byErr != nil {
		t.Errorf("bystander publish failed: %v", byErr)
	}
	want := append([]string(nil), bySent...)
	byMu.Unlock()
	deadline := time.Now().Add(e.f.Timeout)
	for missing := len(want); missing > 0; {
		missing = 0
		for _, id := range want {
			if byTally.count(id) == 0 {
				missing++
			}
		}
		if missing > 0 && time.Now().After(deadline) {
			t.Fatalf("bystander: %d of %d messages not delivered", missing, len(want))
		}
		if missing > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	settle()
	e.checkDuplicates(byTally, len(want), "bystander")

	mu.Lock()
	defer mu.Unlock()
	for _, p := range refused {
		if byPayload[p] != nil {
			t.Errorf("message %q of a refused publish was delivered", p)
		}
	}
	if sn := byPayload["good-first"]; sn == nil || sn.d.ID != first.ID {
		t.Errorf("the good message before the injected ones was not delivered")
	}
	if injected[InjectMissingID] {
		switch {
		case len(idsOfMissing) < 2:
			t.Errorf("message without ID: %d deliveries, want a redelivery after the handler failed", len(idsOfMissing))
		case idsOfMissing[0] == "" || idsOfMissing[0] != idsOfMissing[1]:
			t.Errorf("message without ID delivered with IDs %q, then %q; want one non-empty fallback ID", idsOfMissing[0], idsOfMissing[1])
		}
	}
	if injected[InjectForgedAttempt] {
		sn := byPayload["injected "+InjectForgedAttempt.String()]
		switch {
		case sn == nil:
			t.Errorf("message with forged attempt counts not delivered")
		case sn.d.Attempt != 1 || sn.d.Topic != e.topic || sn.d.Key != key:
			t.Errorf("message with forged attempt counts delivered with attempt %d, topic %q, key %q; want 1, %q, %q",
				sn.d.Attempt, sn.d.Topic, sn.d.Key, e.topic, key)
		}
	}
	if injected[InjectUndecodable] {
		if sn := byPayload["injected "+InjectUndecodable.String()]; sn != nil {
			t.Errorf("undecodable message handed to the handler: %+v", sn.d.Message)
		}
	}
}

// LimitPoison returns, by the name of the limit, one message to topic
// breaking each limit of l, each with a payload naming it. Suites built on
// this one (outboxtest) use it.
func LimitPoison(topic string, l Limits) map[string]broker.Message {
	out := map[string]broker.Message{}
	add := func(name string, edit func(m *broker.Message)) {
		m := broker.NewMessage(topic, []byte("poison: "+name))
		m.Key = "poison"
		edit(&m)
		out[name] = m
	}
	if n := l.MaxNameBytes; n > 0 {
		long := strings.Repeat("n", n+1)
		add("a long key", func(m *broker.Message) { m.Key = long })
		add("a long ID", func(m *broker.Message) { m.ID = long })
		add("a long header name", func(m *broker.Message) { m.Headers = map[string]string{long: "v"} })
		add("a long topic", func(m *broker.Message) { m.Topic = long })
	}
	if l.UTF8Topic {
		add("a topic that is not UTF-8", func(m *broker.Message) { m.Topic = topic + "\xff" })
	}
	if n := l.MaxHeaders; n > 0 {
		add("too many headers", func(m *broker.Message) {
			m.Headers = make(map[string]string, n+1)
			for i := range n + 1 {
				m.Headers[fmt.Sprint("h", i)] = ""
			}
		})
	}
	return out
}
