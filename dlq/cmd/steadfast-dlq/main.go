// Command steadfast-dlq lists, peeks at, replays and purges the dead
// letters of a Kafka topic or a RabbitMQ queue written by the dlq package.
// See package dlq/dlqcli for the commands and flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/steadfast-go/steadfast/dlq/dlqcli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dlqcli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
