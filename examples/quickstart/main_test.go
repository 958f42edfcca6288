package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

func TestQuickstart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"published 5 events",
		"attempt 2 -> ok",
		"error, will be redelivered",
		"every group received all 5 events",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	// alice's events keep their order in each group.
	for _, g := range []string{"billing", "shipping"} {
		var alice []string
		for _, l := range strings.Split(s, "\n") {
			if strings.HasPrefix(l, g) && strings.Contains(l, "alice") && strings.HasSuffix(l, "ok") {
				alice = append(alice, strings.Fields(l)[2]+" "+strings.Fields(l)[3])
			}
		}
		want := []string{"order-1 created", "order-1 paid", "order-1 shipped"}
		if strings.Join(alice, ",") != strings.Join(want, ",") {
			t.Errorf("%s saw alice's events as %v, want %v", g, alice, want)
		}
	}
}
