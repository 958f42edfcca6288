package dlqcli

import (
	"encoding/json"
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzEscape: whatever a message carries, what reaches the terminal is
// valid UTF-8 of printable characters only, as text (Escape) and as JSON
// (escapeJSON of the encoder's output), and the JSON still decodes to the
// same value.
func FuzzEscape(f *testing.F) {
	f.Add("plain id-1")
	f.Add("a\x1b[2J\x1b]0;pwned\x07\u009b31m\u202eb\r\nc\xff")
	f.Add("日本語 \u2028\u2029 \U0001F600 \U000E0001 \ufeff")
	f.Fuzz(func(t *testing.T, s string) {
		for _, out := range []string{Escape(s), oneLine(s, 10)} {
			if !utf8.ValidString(out) {
				t.Fatalf("%q escaped to invalid UTF-8 %q", s, out)
			}
			for _, r := range out {
				if !unicode.IsPrint(r) {
					t.Fatalf("%q escaped to %q, which holds %U", s, out, r)
				}
			}
		}
		if _, ok := payloadText([]byte(s)); ok {
			for _, r := range s {
				if !unicode.IsPrint(r) && r != '\n' && r != '\t' {
					t.Fatalf("payload %q shown as text with %U", s, r)
				}
			}
		}
		enc, err := json.Marshal(map[string]string{s: s})
		if err != nil {
			t.Fatal(err)
		}
		out := escapeJSON(enc)
		for _, r := range string(out) {
			if !unicode.IsPrint(r) {
				t.Fatalf("JSON %q holds %U", out, r)
			}
		}
		var a, b map[string]string
		if err := json.Unmarshal(enc, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("escaped JSON %q: %v", out, err)
		}
		for k, v := range a {
			if b[k] != v {
				t.Fatalf("escaped JSON decodes to %q, want %q", b[k], v)
			}
		}
	})
}
