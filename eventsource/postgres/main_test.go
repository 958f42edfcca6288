package postgres_test

import (
	"os"
	"testing"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.MainWithExamples(m, "postgres", "ExampleStore_In"))
}
