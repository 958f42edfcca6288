package saga_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/saga"
)

func testCommand() broker.Message {
	m := broker.NewMessage("inventory", []byte(`{"sku":"x"}`))
	m.Headers = map[string]string{saga.HeaderSagaID: "order-1", saga.HeaderType: "order", saga.HeaderStep: "reserve",
		saga.HeaderAction: saga.ActionDo, saga.HeaderAttempt: "2", saga.HeaderReplyTo: "saga.replies",
		broker.HeaderTraceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
	return m
}

func TestParseCommand(t *testing.T) {
	c, err := saga.ParseCommand(testCommand())
	if err != nil {
		t.Fatal(err)
	}
	if c.SagaID != "order-1" || c.SagaType != "order" || c.Step != "reserve" || c.Compensate || c.Attempt != 2 ||
		c.ReplyTo != "saga.replies" || c.Action() != saga.ActionDo {
		t.Errorf("parsed %+v", c)
	}
	var v struct{ SKU string }
	if err := c.Decode(&v); err != nil || v.SKU != "x" {
		t.Errorf("decode: %v %+v", err, v)
	}
	for name, mutate := range map[string]func(m *broker.Message){
		"no saga ID":   func(m *broker.Message) { delete(m.Headers, saga.HeaderSagaID) },
		"no step":      func(m *broker.Message) { m.Headers[saga.HeaderStep] = "" },
		"bad action":   func(m *broker.Message) { m.Headers[saga.HeaderAction] = "redo" },
		"bad attempt":  func(m *broker.Message) { m.Headers[saga.HeaderAttempt] = "0" },
		"not a number": func(m *broker.Message) { m.Headers[saga.HeaderAttempt] = "two" },
		"no reply-to":  func(m *broker.Message) { delete(m.Headers, saga.HeaderReplyTo) },
		"no ID":        func(m *broker.Message) { m.ID = "" },
		"control char": func(m *broker.Message) { m.Headers[saga.HeaderSagaID] = "a\nb" },
	} {
		m := testCommand()
		mutate(&m)
		if _, err := saga.ParseCommand(m); !errors.Is(err, saga.ErrMalformedCommand) {
			t.Errorf("%s: %v, want ErrMalformedCommand", name, err)
		}
	}
}

func TestNewReply(t *testing.T) {
	c, _ := saga.ParseCommand(testCommand())
	r := saga.NewReply(context.Background(), c, saga.OutcomeFailure, nil, strings.Repeat("é", 1000)+"\x00")
	h := r.Headers
	if r.Topic != "saga.replies" || r.Key != "order-1" || h[saga.HeaderSagaID] != "order-1" || h[saga.HeaderStep] != "reserve" ||
		h[saga.HeaderAction] != saga.ActionDo || h[saga.HeaderCommand] != c.Message.ID || h[saga.HeaderOutcome] != "failure" ||
		h[broker.HeaderCorrelationID] != "order-1" || h[broker.HeaderCausationID] != c.Message.ID {
		t.Errorf("reply %+v", r)
	}
	if reason := h[saga.HeaderReason]; len(reason) > saga.MaxReasonBytes || !utf8.ValidString(reason) || strings.Contains(reason, "\x00") {
		t.Errorf("reason not cut to %d valid bytes: %d bytes", saga.MaxReasonBytes, len(reason))
	}
	// Without a span in ctx the command's trace continues.
	if h[broker.HeaderTraceparent] != c.Message.Headers[broker.HeaderTraceparent] {
		t.Errorf("trace not continued: %q", h[broker.HeaderTraceparent])
	}
	// With one, the handler's span is the parent.
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	r = saga.NewReply(ctx, c, saga.OutcomeSuccess, []byte("ok"), "ignored")
	if tp := r.Headers[broker.HeaderTraceparent]; !strings.Contains(tp, sc.TraceID().String()) || r.Headers[saga.HeaderReason] != "" {
		t.Errorf("reply headers %v", r.Headers)
	}
	var v string
	if err := (saga.Reply{Message: broker.Message{Payload: []byte(`"x"`)}}).Decode(&v); err != nil || v != "x" {
		t.Errorf("reply decode: %v", err)
	}
	if err := (saga.Reply{Message: broker.Message{Payload: []byte(`{`)}}).Decode(&v); err == nil {
		t.Error("decoding bad JSON succeeded")
	}
}

func TestChoreography(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{7}, SpanID: trace.SpanID{8}, TraceFlags: trace.FlagsSampled})
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	orders := saga.Choreography{Service: "orders"}
	first := orders.Begin(ctx, "orders", "order.placed", []byte("{}"))
	if first.Headers[broker.HeaderCorrelationID] != first.ID || first.Key != first.ID ||
		first.Headers[broker.HeaderType] != "order.placed" || first.Headers[saga.HeaderSource] != "orders" ||
		!strings.Contains(first.Headers[broker.HeaderTraceparent], sc.TraceID().String()) {
		t.Errorf("begin: %+v", first)
	}
	next := saga.Choreography{Service: "inventory"}.Next(context.Background(), first, "inventory", "inventory.reserved", nil)
	if next.Headers[broker.HeaderCorrelationID] != first.ID || next.Headers[broker.HeaderCausationID] != first.ID ||
		next.Key != first.ID || next.Headers[saga.HeaderSource] != "inventory" ||
		next.Headers[broker.HeaderTraceparent] != first.Headers[broker.HeaderTraceparent] {
		t.Errorf("next: %+v", next)
	}
	// An event without a correlation ID starts its own correlation.
	bare := broker.NewMessage("x", nil)
	n2 := saga.Choreography{}.Next(context.Background(), bare, "y", "t", nil)
	if n2.Headers[broker.HeaderCorrelationID] != bare.ID || n2.Headers[saga.HeaderSource] != "" {
		t.Errorf("next of a bare event: %v", n2.Headers)
	}
}
