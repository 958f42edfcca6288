//go:build !unix

package testenv

import (
	"errors"
	"os"
	"time"
)

type lockMode int

const (
	lockShared lockMode = iota
	lockExclusive
)

var errLockTimeout = errors.New("timed out waiting for the lock")

// flockWait is a no-op where flock(2) does not exist: restarts of a shared
// RabbitMQ node are then not fenced off from other test processes.
func flockWait(*os.File, lockMode, time.Duration) error { return nil }

func flockUnlock(*os.File) error { return nil }
