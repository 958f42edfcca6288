package postgres_test

import (
	"fmt"
	"log"
	"strings"

	"github.com/steadfast-go/steadfast/cqrs/postgres"
)

// The DDL for a migration tool, and the table a version of a read model
// writes (the view of the same name points at the serving version's).
func ExampleSchema() {
	ddl, err := postgres.Schema("app.cqrs_checkpoints")
	if err != nil {
		log.Fatal(err)
	}
	for _, line := range strings.Split(ddl, "\n") {
		if strings.HasPrefix(line, "CREATE") {
			fmt.Println(strings.TrimSuffix(line, " ("))
		}
	}
	t, _ := postgres.VersionTable("app.balances", 2)
	fmt.Println(t)
	_, err = postgres.VersionTable("balances; DROP TABLE users", 2)
	fmt.Println(err != nil)
	// Output:
	// CREATE TABLE IF NOT EXISTS "app"."cqrs_checkpoints"
	// CREATE TABLE IF NOT EXISTS "app"."cqrs_checkpoints_names"
	// CREATE TABLE IF NOT EXISTS "app"."cqrs_checkpoints_skipped"
	// CREATE TABLE IF NOT EXISTS "app"."cqrs_checkpoints_applied"
	// CREATE INDEX IF NOT EXISTS "cqrs_checkpoints_applied_exp" ON "app"."cqrs_checkpoints_applied" (expires_at);
	// "app"."balances_v2"
	// true
}
