package postgres_test

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/broker/kafka"
	"github.com/steadfast-go/steadfast/internal/testenv"
	"github.com/steadfast-go/steadfast/outbox"
	"github.com/steadfast-go/steadfast/outbox/outboxtest"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// TestOneSizeLimit: the size limit is one setting. With every default, the
// store accepts exactly what the Kafka publisher accepts
// (broker.DefaultMaxMessageBytes): a message in the old gap between them
// (above the publisher's 1 MiB - 1 KiB, within the store's former 1 MiB) is
// refused by Enqueue, nothing written, instead of being enqueued and then
// parked; an incompressible message at the limit goes all the way to a
// Kafka broker left at its default message.max.bytes. A relay asks its
// publisher for the limit: with a publisher limited to 10,000 bytes it
// warns at construction that the store accepts more, and parks a larger
// row at once without offering it to the publisher.
func TestOneSizeLimit(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHarness(t, postgres.Config{})
	seeds := testenv.Kafka(t)
	kb := kafkaBrokerAt(t, seeds)
	topic := testenv.Name(t, "size")
	if err := kb.Setup(ctx, topic, ""); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	incompressible := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}

	if got := h.store.MaxMessageBytes(); got != broker.DefaultMaxMessageBytes {
		t.Fatalf("store limit %d, want broker.DefaultMaxMessageBytes %d", got, broker.DefaultMaxMessageBytes)
	}
	if got := kb.Publisher.(broker.SizeLimiter).MaxMessageBytes(); got != h.store.MaxMessageBytes() {
		t.Fatalf("kafka publisher limit %d, store limit %d: two settings", got, h.store.MaxMessageBytes())
	}
	gap := broker.NewMessage(topic, incompressible(1<<20-512))
	if err := h.store.Enqueue(ctx, h.pool, gap); !errors.Is(err, broker.ErrMessageTooLarge) {
		t.Fatalf("Enqueue of a message in the old gap: %v, want ErrMessageTooLarge", err)
	}
	if st, err := h.store.Stats(ctx); err != nil || st.Pending != 0 || st.Dead != 0 {
		t.Fatalf("after the refused Enqueue: %+v, %v; want nothing written", st, err)
	}

	at := broker.NewMessage(topic, nil)
	at.Payload = incompressible(broker.DefaultMaxMessageBytes - at.Size()) // Size counts the ID
	if err := h.store.Enqueue(ctx, h.pool, at); err != nil {
		t.Fatalf("Enqueue at the limit: %v", err)
	}
	relay, err := outbox.NewRelay(h.store, kb.Publisher, outbox.Config{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := relay.RunOnce(ctx); n != 1 || err != nil {
		t.Fatalf("RunOnce = %d, %v", n, err)
	}
	if st, err := h.store.Stats(ctx); err != nil || st.Pending != 0 || st.Dead != 0 {
		t.Fatalf("after publishing the message at the limit: %+v, %v; want it published", st, err)
	}

	small, err := kafka.NewPublisher(kafka.PublisherConfig{Config: kafka.Config{Brokers: seeds, Logger: quiet}, MaxMessageBytes: 10_000})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	counted := &outboxtest.FaultyPublisher{Next: small}
	rec := &testenv.LogRecorder{}
	relay, err = outbox.NewRelay(h.store, counted, outbox.Config{Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	warned := false
	for _, r := range rec.Records() {
		warned = warned || r.Level == slog.LevelWarn && strings.Contains(r.Message, "store accepts messages its publisher refuses")
	}
	if !warned {
		t.Errorf("NewRelay did not warn that the store accepts more than the publisher: %v", rec.Records())
	}
	big := broker.NewMessage(topic, incompressible(20_000))
	if err := h.store.Enqueue(ctx, h.pool, big); err != nil {
		t.Fatal(err)
	}
	if n, err := relay.RunOnce(ctx); n != 1 || err != nil {
		t.Fatalf("RunOnce = %d, %v", n, err)
	}
	parked, err := h.store.Parked(ctx, outbox.ParkedQuery{})
	if err != nil || len(parked) != 1 || parked[0].Message.ID != big.ID || !strings.Contains(parked[0].LastError, "message too large") {
		t.Fatalf("parked = %v, %v; want the 20 KB row, too large", parked, err)
	}
	if counted.Calls() != 0 {
		t.Errorf("the oversized row was offered to the publisher %d times", counted.Calls())
	}
}
