package redis_test

import (
	"os"
	"testing"

	"github.com/steadfast-go/steadfast/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.MainWithExamples(m, "redis", "Example", "ExampleStore_AcquireBatch"))
}
