package pgtable

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := map[string]string{
		"":                      `"outbox"`,
		"orders_outbox":         `"orders_outbox"`,
		"app.orders":            `"app"."orders"`,
		"_x1":                   `"_x1"`,
		strings.Repeat("a", 53): `"` + strings.Repeat("a", 53) + `"`,
	}
	for in, want := range good {
		n, err := Parse("outbox/postgres", in, "outbox", 10)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if n.Ident() != want {
			t.Errorf("Parse(%q).Ident() = %s, want %s", in, n.Ident(), want)
		}
	}
	bad := []string{
		"Orders", "a.b.c", "1abc", "a-b", `a"b`, "a;drop table x", "a b", ".", "a.", ".a",
		"a\x00b", "é", strings.Repeat("a", 54), strings.Repeat("a", 64) + ".b", "a..b",
	}
	for _, in := range bad {
		_, err := Parse("outbox/postgres", in, "outbox", 10)
		if !errors.Is(err, ErrInvalidTable) {
			t.Errorf("Parse(%q) = %v, want ErrInvalidTable", in, err)
			continue
		}
		if !strings.HasPrefix(err.Error(), "outbox/postgres: ") {
			t.Errorf("Parse(%q) error %q does not name the package", in, err)
		}
	}
}

func TestNames(t *testing.T) {
	n, err := Parse("eventsource/postgres", "app.events", "", 12)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Sibling("_streams"); got != `"app"."events_streams"` {
		t.Errorf("Sibling = %s", got)
	}
	if got := n.Derived("_pkey"); got != `"events_pkey"` {
		t.Errorf("Derived = %s", got)
	}
	if got := n.Literal(); got != `'"app"."events"'` {
		t.Errorf("Literal = %s", got)
	}
	if n.String() != "app.events" || n.Base() != "events" {
		t.Errorf("String/Base = %s/%s", n.String(), n.Base())
	}
	m, _ := Parse("x", "other.events", "", 0)
	if n.LockKey("ns") == m.LockKey("ns") {
		t.Error("lock keys of tables in different schemas collide")
	}
}
