// Command steadfast is the operators' tool for the library's durable state:
// parked outbox rows, saga instances, dead letters and projections, one
// subcommand each.
//
//	steadfast outbox <stats|list|show|redrive|delete> [flags]   parked outbox rows (outbox/outboxcli)
//	steadfast saga   <list|show|retry|skip|cancel|counts|flows|flow> [flags]   saga instances (saga/sagacli)
//	steadfast dlq    <list|peek|replay|purge> [flags]   dead letters on Kafka or RabbitMQ (dlq/dlqcli)
//	steadfast projection <status|skipped|reset|activate> [flags]   CQRS projections (cqrs/cqrscli)
//
// Install it with
//
//	go install github.com/steadfast-go/steadfast/internal/cmd/steadfast@latest
//
// Every subcommand prints its help with -h ("steadfast outbox -h",
// "steadfast outbox list -h"), and the flags are shared where the meaning is:
// -db (PostgreSQL URL), -table, -limit, -after, -json, -all, -timeout.
// Backends default to the same variables the library's tests use:
// STEADFAST_POSTGRES_URL (outbox, saga, projection), STEADFAST_KAFKA_BROKERS and
// STEADFAST_RABBITMQ_URL (dlq); a flag overrides its variable.
//
// The exit status is the subcommand's: 0 on success, 1 when the operation
// failed, 2 on a usage error.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/steadfast-go/steadfast/cqrs/cqrscli"
	"github.com/steadfast-go/steadfast/dlq/dlqcli"
	"github.com/steadfast-go/steadfast/outbox/outboxcli"
	"github.com/steadfast-go/steadfast/saga/sagacli"
)

// Exit statuses, the same in every subcommand.
const (
	exitOK    = 0
	exitUsage = 2
)

// A command is one subcommand: it runs with the arguments after its name.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// commands are the subcommands, in the order help lists them.
var commands = []command{
	{"outbox", "parked outbox rows: stats, list, show, redrive, delete", outboxcli.Run},
	{"saga", "saga instances and choreographed flows: list, show, retry, skip, cancel, counts, flows, flow", sagacli.Run},
	{"dlq", "dead letters on Kafka or RabbitMQ: list, peek, replay, purge", dlqcli.Run},
	{"projection", "CQRS projections: status, skipped, reset, activate", cqrscli.Run},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: steadfast <command> <subcommand> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, `Run "steadfast <command> -h" for its subcommands, "steadfast <command> <subcommand> -h" for the flags.`)
	fmt.Fprintln(w, "Backends default to $STEADFAST_POSTGRES_URL, $STEADFAST_KAFKA_BROKERS and $STEADFAST_RABBITMQ_URL.")
}

// run runs the command line args (without the program name) and returns the
// exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 { // "steadfast help outbox"
			return run(ctx, []string{args[1], "-h"}, stdout, stderr)
		}
		printUsage(stdout)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "steadfast: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}
