package rabbitdlq

import (
	"context"
	"testing"

	"github.com/steadfast-go/steadfast/broker"
)

type recordingPublisher struct{ got []broker.Message }

func (p *recordingPublisher) Publish(_ context.Context, msgs ...broker.Message) error {
	p.got = append(p.got, msgs...)
	return nil
}

// TestCleanPublisher: the headers RabbitMQ adds when it dead-letters a
// message are dropped from what is published, without touching the
// caller's messages or other headers.
func TestCleanPublisher(t *testing.T) {
	rec := &recordingPublisher{}
	in := []broker.Message{
		{ID: "a", Headers: map[string]string{"type": "T"}},
		{ID: "b", Headers: map[string]string{"type": "T", "x-death": "[]", "x-first-death-queue": "q", "x-last-death-reason": "rejected", "x-delivery-count": "2", "x-other": "kept"}},
	}
	if err := (cleanPublisher{rec}).Publish(context.Background(), in...); err != nil {
		t.Fatal(err)
	}
	if len(rec.got) != 2 || len(rec.got[0].Headers) != 1 {
		t.Fatalf("published %+v", rec.got)
	}
	if h := rec.got[1].Headers; len(h) != 2 || h["type"] != "T" || h["x-other"] != "kept" {
		t.Errorf("cleaned headers %v", h)
	}
	if len(in[1].Headers) != 6 {
		t.Error("the caller's message was modified")
	}
}
