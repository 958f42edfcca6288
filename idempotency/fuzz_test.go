package idempotency

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzParseKey: whatever a client sends as Idempotency-Key, parseKey
// returns an error or a non-empty printable-ASCII key within the limit, and
// a key sent plain or as an sf-string parses to itself.
func FuzzParseKey(f *testing.F) {
	for _, s := range []string{"k", `"k"`, `"a\"b\\c"`, `"`, `""`, `"\`, " k ", "\x00", "é", strings.Repeat("x", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		const limit = 255
		key, err := parseKey([]string{raw}, limit)
		if err != nil {
			return
		}
		if key == "" || len(key) > limit {
			t.Fatalf("parseKey(%q) = %q: empty or over the limit", raw, key)
		}
		for i := 0; i < len(key); i++ {
			if key[i] < 0x20 || key[i] > 0x7e {
				t.Fatalf("parseKey(%q) = %q: not printable ASCII", raw, key)
			}
		}
		if CheckKey("s", key) != nil {
			t.Fatalf("parseKey(%q) = %q, which CheckKey refuses", raw, key)
		}
		quoted := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if again, err := parseKey([]string{quoted}, limit); err != nil || again != key {
			t.Fatalf("key %q quoted as %q parses to %q, %v", key, quoted, again, err)
		}
	})
}

// FuzzCredentialsClient: any credentials give a stable name that does not
// contain them.
func FuzzCredentialsClient(f *testing.F) {
	f.Add("Bearer alice", "session=1")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, auth, cookie string) {
		r, _ := http.NewRequest("POST", "http://x/", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}
		c := CredentialsClient(r)
		if (auth == "" && cookie == "") != (c == "") {
			t.Fatalf("CredentialsClient = %q for auth %q cookie %q", c, auth, cookie)
		}
		if c != CredentialsClient(r) || len(c) > 64 || (len(auth) > 3 && strings.Contains(c, auth)) {
			t.Fatalf("CredentialsClient = %q: unstable, too long or leaking", c)
		}
	})
}
