package dlqcli_test

import (
	"context"
	"fmt"
	"os"

	"github.com/steadfast-go/steadfast/dlq/dlqcli"
)

// Run is the whole tool: mount it as a subcommand of a larger one by
// passing the arguments after the subcommand's name. Here a purge names no
// selection and no -all, which is a usage error (exit status 2) caught
// before any broker is contacted.
func ExampleRun() {
	code := dlqcli.Run(context.Background(), []string{"purge", "-broker", "kafka", "-brokers", "localhost:9092", "-dlq", "orders.billing.dlq"},
		os.Stdout, os.Stdout)
	fmt.Println("exit status", code)
	// Output:
	// steadfast-dlq: purge of every dead letter needs -all (or select with -id, -from, -to, -limit)
	// exit status 2
}
