// Command steadfast-saga is the operators' tool for sagas on PostgreSQL:
// list, inspect, retry, skip or cancel instances, and follow choreographed
// flows. See package saga/sagacli for the commands and flags.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/steadfast-go/steadfast/saga/sagacli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sagacli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
