package sagacli_test

import (
	"context"
	"fmt"
	"os"

	"github.com/steadfast-go/steadfast/saga/sagacli"
)

// Run is the whole tool: mount it as a subcommand of a larger one by
// passing the arguments after the subcommand's name. Here the database URL
// is missing, which is a usage error (exit status 2).
func ExampleRun() {
	code := sagacli.Run(context.Background(), []string{"show", "order-7", "-db="}, os.Stdout, os.Stdout)
	fmt.Println("exit status", code)
	// Output:
	// steadfast-saga: no database: pass -db or set STEADFAST_POSTGRES_URL
	// exit status 2
}
