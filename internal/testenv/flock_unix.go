//go:build unix

package testenv

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/steadfast-go/steadfast/broker"
)

type lockMode int

const (
	lockShared lockMode = iota
	lockExclusive
)

var errLockTimeout = errors.New("timed out waiting for the lock")

// flockWait takes a flock(2) lock on f, polling until it is granted or
// timeout passes (flock itself cannot time out). Converting a held lock to
// the other mode is allowed.
func flockWait(f *os.File, mode lockMode, timeout time.Duration) error {
	how := syscall.LOCK_SH
	if mode == lockExclusive {
		how = syscall.LOCK_EX
	}
	deadline := time.Now().Add(timeout)
	// The wait between tries: 10ms doubling to 320ms.
	backoff := broker.Backoff{Initial: 10 * time.Millisecond, Max: 320 * time.Millisecond, Jitter: -1}
	for try := 1; ; try++ {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, syscall.EINTR):
			continue
		case !errors.Is(err, syscall.EWOULDBLOCK):
			return fmt.Errorf("flock %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w on %s after %v", errLockTimeout, f.Name(), timeout)
		}
		time.Sleep(backoff.Delay(try))
	}
}

func flockUnlock(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
