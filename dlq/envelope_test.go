package dlq

import (
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	now := time.Now()
	e := Envelope{
		ID: "id-1", Topic: "orders", Key: "customer-7", Time: now.Add(-time.Hour),
		Partition: 3, Offset: 1042, Queue: "orders.billing", Group: "billing", Handler: "charge",
		Error: "boom", Class: ClassPermanent, Attempts: 4,
		FirstFailure: now.Add(-time.Minute), LastFailure: now, Due: now.Add(time.Second),
	}
	h := map[string]string{"type": "OrderPlaced", HeaderAttempts: "99"}
	e.SetHeaders(h)
	if h["type"] != "OrderPlaced" {
		t.Error("SetHeaders dropped an application header")
	}
	got, err := ParseEnvelope(h)
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range []*time.Time{&e.Time, &e.FirstFailure, &e.LastFailure, &e.Due, &got.Time, &got.FirstFailure, &got.LastFailure, &got.Due} {
		*ts = ts.UTC().Round(0)
	}
	if got != e {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, e)
	}

	// Optional fields stay out.
	h2 := map[string]string{}
	Envelope{ID: "x", Topic: "t", Partition: -1, Offset: -1}.SetHeaders(h2)
	for _, k := range []string{HeaderPartition, HeaderOffset, HeaderQueue, HeaderHandler, HeaderDue, HeaderTime} {
		if _, ok := h2[k]; ok {
			t.Errorf("header %s set for an empty field", k)
		}
	}
	got2, err := ParseEnvelope(h2)
	if err != nil || got2.Partition != -1 || got2.Offset != -1 || got2.Attempts != 0 {
		t.Errorf("parse of minimal envelope = %+v, %v", got2, err)
	}

	stripped := Strip(h)
	if len(stripped) != 1 || stripped["type"] != "OrderPlaced" {
		t.Errorf("Strip = %v", stripped)
	}
	if h[HeaderID] == "" {
		t.Error("Strip modified its argument")
	}
	if Strip(h2) != nil {
		t.Error("Strip of envelope-only headers should be nil")
	}
}

func TestParseEnvelopeErrors(t *testing.T) {
	if _, err := ParseEnvelope(map[string]string{"type": "x"}); !errors.Is(err, ErrNoEnvelope) {
		t.Errorf("no envelope: %v", err)
	}
	bad := []map[string]string{
		{HeaderAttempts: "many"},
		{HeaderAttempts: "-1"},
		{HeaderAttempts: "1", HeaderErrorClass: "odd"},
		{HeaderAttempts: "1", HeaderLastFailure: "yesterday"},
		{HeaderAttempts: "1", HeaderPartition: "p3"},
		{HeaderAttempts: "1", HeaderOffset: "1e3"},
	}
	for _, h := range bad {
		if _, err := ParseEnvelope(h); !errors.Is(err, ErrMalformedEnvelope) {
			t.Errorf("ParseEnvelope(%v) = %v, want ErrMalformedEnvelope", h, err)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("short", 10); got != "short" {
		t.Errorf("truncate short = %q", got)
	}
	long := strings.Repeat("é", 2000) // 4000 bytes
	got := truncate(long, MaxErrorBytes)
	if len(got) > MaxErrorBytes || !strings.HasSuffix(got, "...") || !utf8.ValidString(got) {
		t.Errorf("truncate: %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
}
