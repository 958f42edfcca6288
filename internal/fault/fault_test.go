package fault_test

import (
	"context"
	"errors"
	"testing"

	"github.com/steadfast-go/steadfast/internal/fault"
)

func TestAt(t *testing.T) {
	ctx := context.Background()
	if fault.From(ctx) != nil || fault.At(ctx, "p", nil) != nil {
		t.Fatal("a plain context injects a fault")
	}
	boom := errors.New("boom")
	ctx = fault.With(ctx, func(point string, data any) error {
		if point == "p" && data == 7 {
			return boom
		}
		return nil
	})
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := fault.At(cctx, "p", 7); !errors.Is(err, boom) {
		t.Errorf("At(p, 7) = %v, want the fault (also through a cancelled child)", err)
	}
	if err := fault.At(ctx, "q", 7); err != nil {
		t.Errorf("At(q) = %v", err)
	}
}
