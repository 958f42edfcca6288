package rabbitmq

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestAwait: await returns the call's result when it comes first; when ctx
// ends first it returns at once an abandoned error wrapping ctx's cause,
// and hands the call's late result to discard, once; it calls nothing when
// ctx has ended already, and calls directly with a ctx that never ends.
func TestAwait(t *testing.T) {
	t.Parallel()
	discarded := func() (func(int, error), <-chan int) {
		c := make(chan int, 2)
		return func(v int, _ error) { c <- v }, c
	}
	noDiscard := func(v int, err error) { t.Errorf("discard(%d, %v) called", v, err) }

	t.Run("answered", func(t *testing.T) {
		v, err := await(context.Background(), func() (int, error) { return 1, nil }, noDiscard)
		if v != 1 || err != nil {
			t.Errorf("await = %d, %v; want 1, nil", v, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		boom := errors.New("boom")
		v, err = await(ctx, func() (int, error) { return 2, boom }, noDiscard)
		if v != 2 || err != boom || isAbandoned(err) {
			t.Errorf("await = %d, %v; want 2, boom", v, err)
		}
	})

	t.Run("abandoned", func(t *testing.T) {
		stop := errors.New("stop")
		ctx, cancel := context.WithCancelCause(context.Background())
		answer := make(chan struct{})
		discard, got := discarded()
		time.AfterFunc(50*time.Millisecond, func() { cancel(stop) })
		start := time.Now()
		v, err := await(ctx, func() (int, error) {
			<-answer
			return 3, nil
		}, discard)
		if took := time.Since(start); took > time.Second {
			t.Errorf("await returned after %v", took)
		}
		if v != 0 || !isAbandoned(err) || !errors.Is(err, stop) {
			t.Errorf("await = %d, %v; want 0 and an abandoned error wrapping the cause", v, err)
		}
		select {
		case v := <-got:
			t.Fatalf("discard(%d) called before the call returned", v)
		case <-time.After(50 * time.Millisecond):
		}
		close(answer)
		if v := <-got; v != 3 {
			t.Errorf("discard got %d, want 3", v)
		}
		select {
		case v := <-got:
			t.Errorf("discard called twice, again with %d", v)
		case <-time.After(50 * time.Millisecond):
		}
	})

	t.Run("ended", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Nanosecond)
		defer cancel()
		<-ctx.Done()
		discard, got := discarded()
		_, err := await(ctx, func() (int, error) {
			t.Error("call made after ctx ended")
			return 4, nil
		}, discard)
		if !isAbandoned(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("await = %v, want an abandoned error matching DeadlineExceeded", err)
		}
		if v := <-got; v != 0 {
			t.Errorf("discard got %d, want the zero value", v)
		}
	})
}
