#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target of the module (func FuzzXxx in a
# _test.go file) for FUZZTIME each, one after another: `go test -fuzz` takes
# one package and one target at a time. make test runs it briefly, so each
# target's seed corpus and a few seconds of new inputs are checked on every
# change; make fuzz runs it for longer. A failing input is saved under the
# package's testdata/fuzz/ by go test: commit it, and it stays a regression
# test of the ordinary `go test` run.
#
# Usage: fuzz.sh [FUZZTIME] [PACKAGES...]   (defaults: 5s, ./...)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
fuzztime="${1:-5s}"
shift || true
pkgs=("${@:-./...}")
GO="${GO:-go}"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=0
count=0
while read -r pkg; do
	dir="$($GO list -f '{{.Dir}}' "$pkg")"
	targets="$(grep -hoE '^func Fuzz[A-Za-z0-9_]+\(' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/' | sort -u || true)"
	for target in $targets; do
		count=$((count + 1))
		echo "fuzz: $pkg $target ($fuzztime)"
		if ! $GO test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg" >"$log" 2>&1; then
			cat "$log"
			echo "fuzz: FAIL $pkg $target"
			failed=$((failed + 1))
		fi
	done
done < <($GO list "${pkgs[@]}")
echo "fuzz: $count targets, $failed failed"
[ "$failed" -eq 0 ]
