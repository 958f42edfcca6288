package testenv

import (
	"flag"
	"strings"
	"testing"
)

// TestExampleBackendDecision: a set variable makes the backend available
// without asking Docker; an unknown backend is a reason, not a pass.
func TestExampleBackendDecision(t *testing.T) {
	t.Setenv(EnvPostgresURL, "postgres://example.invalid/x")
	t.Setenv(EnvRedisURL, "redis://example.invalid/0")
	for _, b := range []string{"postgres", "redis"} {
		if reason := exampleBackendMissing(b); reason != "" {
			t.Errorf("%s with its variable set: missing (%s)", b, reason)
		}
	}
	if reason := exampleBackendMissing("kafka"); !strings.Contains(reason, "unknown backend") {
		t.Errorf("kafka: %q, want an unknown backend", reason)
	}
	t.Setenv(EnvPostgresURL, "")
	if reason, docker := exampleBackendMissing("postgres"), dockerUnavailable(); (reason == "") != (docker == nil) {
		t.Errorf("postgres without its variable: missing %q, Docker error %v: want missing exactly when Docker does not answer", reason, docker)
	}
}

// TestSkipExamples: the Examples' names join the -test.skip pattern,
// anchored, without dropping what the command line asked to skip.
func TestSkipExamples(t *testing.T) {
	f := flag.Lookup("test.skip")
	old := f.Value.String()
	t.Cleanup(func() { _ = f.Value.Set(old) })

	_ = f.Value.Set("")
	if err := skipExamples([]string{"Example", "ExampleStore_Claim"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Value.String(); got != "^(Example|ExampleStore_Claim)$" {
		t.Errorf("skip = %q", got)
	}
	_ = f.Value.Set("TestSlow")
	if err := skipExamples([]string{"Example_wiring"}); err != nil {
		t.Fatal(err)
	}
	if got := f.Value.String(); got != "TestSlow|^(Example_wiring)$" {
		t.Errorf("skip = %q", got)
	}
}
