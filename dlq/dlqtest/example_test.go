package dlqtest_test

import (
	"testing"

	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/dlq/dlqtest"
)

// A backend package runs the suite from its tests with a factory that
// gives each case a fresh consumer and inspector (see kafkadlq and
// rabbitdlq for complete factories).
func ExampleRun() {
	_ = func(t *testing.T) {
		dlqtest.Run(t, dlqtest.Features{Retries: []dlq.Retries{dlq.RetryInProcess, dlq.RetryRedeliver}}, func(t *testing.T) dlqtest.Backend {
			return dlqtest.Backend{ /* Publisher, Consumer, Inspector */ }
		})
	}
}
