package cqrscli_test

import (
	"context"
	"os"

	"github.com/steadfast-go/steadfast/cqrs/cqrscli"
)

// A command mounts the tool by handing it its arguments and streams.
func ExampleRun() {
	cqrscli.Run(context.Background(), []string{"help"}, os.Stdout, os.Stdout)
	// Output:
	// usage: steadfast projection <command> [flags]
	//
	// commands:
	//   status    every projection version: serving, status, checkpoint, lag, rate, time left
	//   skipped   events a projection version skipped
	//   reset     clear a stopped or retrying status (the event is applied again)
	//   activate  make a projection version the serving one (blue/green swap)
	//
	// Run "steadfast projection <command> -h" for the flags.
}
