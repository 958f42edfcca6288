package main

// The dlq subcommand runs the steadfast-dlq tool (dlq/cmd/steadfast-dlq),
// which keeps its command line in its main package: this file execs it from
// PATH (or from the directory this program runs from). When the tool's
// command line is a package (dlq/dlqcli, with the Run signature of
// outboxcli.Run and sagacli.Run), this file becomes
//
//	var dlqRun = dlqcli.Run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// dlqTool is the program the dlq subcommand runs.
const dlqTool = "steadfast-dlq"

// dlqEnv maps the dlq flags that name a backend to the variables that give
// their defaults.
var dlqEnv = []struct{ flag, env string }{
	{"brokers", "STEADFAST_KAFKA_BROKERS"},
	{"url", "STEADFAST_RABBITMQ_URL"},
}

func dlqRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	path, err := findDLQTool()
	if err != nil {
		fmt.Fprintf(stderr, "steadfast dlq: %v; install it with\n  go install github.com/steadfast-go/steadfast/dlq/cmd/steadfast-dlq@latest\n", err)
		return 1
	}
	cmd := exec.CommandContext(ctx, path, dlqArgs(args, os.Getenv)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode()
	default:
		fmt.Fprintf(stderr, "steadfast dlq: %v\n", err)
		return 1
	}
}

// dlqArgs inserts the backend flags whose variables are set and that args
// do not give, right after the subcommand, so that a flag on the command
// line wins.
func dlqArgs(args []string, getenv func(string) string) []string {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return args
	}
	out := []string{args[0]}
	for _, d := range dlqEnv {
		if v := getenv(d.env); v != "" && !hasFlag(args[1:], d.flag) {
			out = append(out, "-"+d.flag+"="+v)
		}
	}
	return append(out, args[1:]...)
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		a = strings.TrimLeft(a, "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

// findDLQTool looks next to this program first, then on PATH.
func findDLQTool() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), dlqTool)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(dlqTool)
	if err != nil {
		return "", fmt.Errorf("%s not found next to this program or on PATH", dlqTool)
	}
	return p, nil
}
