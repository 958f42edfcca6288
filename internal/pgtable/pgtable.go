// Package pgtable validates and quotes the table names of steadfast's
// PostgreSQL stores, so that outbox, idempotency, eventsource, cqrs and saga
// accept the same names and reject bad ones with the same error.
//
// A table name is "name" or "schema.name". Each part is a plain lowercase
// identifier: a letter or underscore, then letters, digits and underscores,
// at most 63 bytes. Uppercase is refused rather than folded: the name is
// quoted in SQL, so "Orders" would create a table that an unquoted Orders in
// the user's own SQL cannot find. A store that derives further names from
// the table (indexes, constraints, companion tables such as
// name_snapshots) declares its longest suffix, so every derived name fits
// in PostgreSQL's 63-byte limit and is never silently truncated.
package pgtable

import (
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrInvalidTable is wrapped by every error Parse returns. Each postgres
// package exports it as its own ErrInvalidTable, so errors.Is works with
// whichever name the caller imported.
var ErrInvalidTable = errors.New("invalid table name")

// maxIdent is PostgreSQL's identifier limit (NAMEDATALEN - 1).
const maxIdent = 63

// Name is a validated table name.
type Name struct {
	schema string // "" when unqualified
	base   string
}

// Parse validates name ("" means def) for package pkg (its import path
// below the module, e.g. "outbox/postgres", which starts the error text).
// maxSuffix is the length of the longest suffix the package appends to the
// base name to derive other names (0 when it derives none).
func Parse(pkg, name, def string, maxSuffix int) (Name, error) {
	if name == "" {
		name = def
	}
	bad := func(why string) (Name, error) {
		return Name{}, fmt.Errorf("%s: %w %q: %s", pkg, ErrInvalidTable, name, why)
	}
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return bad(`want "name" or "schema.name"`)
	}
	for _, p := range parts {
		if !plain(p) {
			return bad(fmt.Sprintf("%q is not a plain lowercase identifier ([a-z_][a-z0-9_]*, at most %d bytes)", p, maxIdent))
		}
	}
	base := parts[len(parts)-1]
	if limit := maxIdent - maxSuffix; len(base) > limit {
		return bad(fmt.Sprintf("the table part is %d bytes, this store allows %d (it derives names up to %d bytes longer)",
			len(base), limit, maxSuffix))
	}
	n := Name{base: base}
	if len(parts) == 2 {
		n.schema = parts[0]
	}
	return n, nil
}

func plain(s string) bool {
	if s == "" || len(s) > maxIdent {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_' || c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// String returns the name as given ("schema.name" or "name"), unquoted.
func (n Name) String() string {
	if n.schema == "" {
		return n.base
	}
	return n.schema + "." + n.base
}

// Base returns the unqualified table part.
func (n Name) Base() string { return n.base }

// Ident returns the quoted, possibly schema-qualified name for SQL.
func (n Name) Ident() string { return n.Sibling("") }

// Sibling returns the quoted name of a companion table in the same schema:
// the base name followed by suffix (e.g. "_snapshots").
func (n Name) Sibling(suffix string) string {
	if n.schema == "" {
		return pgx.Identifier{n.base + suffix}.Sanitize()
	}
	return pgx.Identifier{n.schema, n.base + suffix}.Sanitize()
}

// Derived returns the quoted, unqualified name of an index or constraint:
// the base name followed by suffix. PostgreSQL puts an index in its table's
// schema, so it takes no qualifier.
func (n Name) Derived(suffix string) string { return pgx.Identifier{n.base + suffix}.Sanitize() }

// Literal returns the name as a quoted SQL string literal of the quoted
// identifier, for use as "'...'::regclass".
func (n Name) Literal() string { return "'" + strings.ReplaceAll(n.Ident(), "'", "''") + "'" }

// LockKey returns a stable 32-bit advisory-lock key for this table in the
// given namespace (e.g. "steadfast.outbox"), for serializing Migrate.
func (n Name) LockKey(namespace string) int32 {
	h := fnv.New32a()
	h.Write([]byte(namespace + ":" + n.String()))
	return int32(h.Sum32())
}
