package dlq

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseEnvelope: envelope headers from the wire (a retry-topic message,
// a dead letter an inspector reads) never panic ParseEnvelope; what it
// accepts has no negative count or size and times within the broker's
// range, and writes back (SetHeaders) to headers that parse to the same
// envelope.
func FuzzParseEnvelope(f *testing.F) {
	f.Add("3", "id", "orders", "customer-7", "2025-03-01T12:00:00.123456789Z", "1", "42", "payload", "100", "transient", "boom")
	f.Add("0", "", "", "", "0000-01-01T00:00:00+01:00", "-1", "-1", "payload,headers", "0", "permanent", "")
	f.Add("-4", "x", "t", "k", "9999-12-31T23:59:59-01:00", "2147483648", "9223372036854775808", "nothing", "-1", "fatal", "e")
	f.Add("9223372036854775807", "x", "t", "k", "1970-01-01T00:00:00Z", "0", "0", "", "", "", "\xff")
	f.Fuzz(func(t *testing.T, attempts, id, topic, key, ts, partition, offset, omitted, size, class, errText string) {
		h := map[string]string{
			HeaderAttempts: attempts, HeaderID: id, HeaderTopic: topic, HeaderKey: key, HeaderTime: ts,
			HeaderFirstFailure: ts, HeaderLastFailure: ts, HeaderPartition: partition, HeaderOffset: offset,
			HeaderErrorClass: class, HeaderError: errText,
		}
		if omitted != "" {
			h[HeaderOmitted], h[HeaderOriginalSize] = omitted, size
		}
		e, err := ParseEnvelope(h)
		if err != nil {
			return
		}
		if e.Attempts < 0 || e.OriginalSize < 0 {
			t.Fatalf("negative attempts %d or size %d", e.Attempts, e.OriginalSize)
		}
		for _, tm := range []time.Time{e.Time, e.FirstFailure, e.LastFailure} {
			if !tm.IsZero() && (tm.Before(minTime) || tm.After(maxTime)) {
				t.Fatalf("time %v out of range", tm)
			}
		}
		back := map[string]string{}
		e.SetHeaders(back)
		e2, err := ParseEnvelope(back)
		if err != nil {
			t.Fatalf("written back %v: %v", back, err)
		}
		norm := func(e *Envelope) {
			for _, tm := range []*time.Time{&e.Time, &e.FirstFailure, &e.LastFailure, &e.Due} {
				*tm = tm.UTC()
			}
		}
		norm(&e)
		norm(&e2)
		if e != e2 {
			t.Fatalf("round trip:\n got %+v\nwant %+v", e2, e)
		}
	})
}

// FuzzTruncate: the error text kept in an envelope is cut to at most n
// bytes of valid UTF-8, a prefix of the text when that was UTF-8.
func FuzzTruncate(f *testing.F) {
	f.Add("hello, world", 5)
	f.Add("日本語のエラー", 7)
	f.Add("", 0)
	f.Add("abc", -1)
	f.Fuzz(func(t *testing.T, s string, n int) {
		got := truncate(s, n)
		if len(s) <= n {
			if got != s {
				t.Fatalf("truncate(%q, %d) = %q, want it unchanged", s, n, got)
			}
			return
		}
		if len(got) > max(n, 0) || !utf8.ValidString(got) {
			t.Fatalf("truncate(%q, %d) = %q: too long or not UTF-8", s, n, got)
		}
		if utf8.ValidString(s) && !strings.HasPrefix(s, strings.TrimSuffix(got, "...")) {
			t.Fatalf("truncate(%q, %d) = %q is not a prefix", s, n, got)
		}
	})
}
