package rabbitmq

import (
	"context"
	"errors"

	amqp "github.com/rabbitmq/amqp091-go"
)

// await calls call, one of amqp091's synchronous methods (Connection.Channel,
// Channel.Confirm, the declarations, Qos, Consume, Close...), which wait for
// the broker's answer and take no context, and returns what call returns,
// unless ctx ends first. On a connection up at the TCP level whose broker
// went silent, such a call would wait until missed heartbeats end the
// connection, 1.5 × Config.Heartbeat later; await returns as soon as ctx
// ends, with an *abandonedError wrapping ctx's cause (so errors.Is matches
// context.DeadlineExceeded, context.Canceled or the cause given to the
// context). It calls nothing when ctx has ended already.
//
// An abandoned call goes on in a goroutine of its own: amqp091 cannot cancel
// a request, and the broker's answer must still be taken (amqp091's reader
// waits until someone does). The goroutine ends when the broker answers or
// the connection ends, and then hands what call returned to discard (when
// not nil; discard gets the zero T and ctx's cause when call was not made).
// discard closes what call opened, or the channel the request was made on:
// that channel is dead to the caller, who must forget it. A request made on
// it next could take the abandoned request's answer, and so could closing
// it at once (Channel.Close waits for close-ok on the same queue of
// answers as the pending request). chanCall does this for channel methods.
//
// Cost: one goroutine per call when ctx can end. await is therefore for
// opening channels and declaring, never on the publish path: sending and
// waiting for confirms honour ctx without it.
func await[T any](ctx context.Context, call func() (T, error), discard func(T, error)) (T, error) {
	if ctx.Done() == nil { // never ends
		return call()
	}
	var zero T
	if ctx.Err() != nil {
		cause := context.Cause(ctx)
		if discard != nil {
			go discard(zero, cause)
		}
		return zero, &abandonedError{cause: cause}
	}
	type result struct {
		v   T
		err error
	}
	res := make(chan result) // unbuffered: a result sent is the caller's
	gaveUp := make(chan struct{})
	go func() {
		v, err := call()
		select {
		case res <- result{v, err}:
		case <-gaveUp:
			if discard != nil {
				discard(v, err)
			}
		}
	}()
	select {
	case r := <-res:
		return r.v, r.err
	case <-ctx.Done():
		close(gaveUp)
		return zero, &abandonedError{cause: context.Cause(ctx)}
	}
}

// abandonedError is await's error when ctx ended before the broker
// answered. It wraps ctx's cause.
type abandonedError struct{ cause error }

func (e *abandonedError) Error() string { return "waiting for the broker: " + e.cause.Error() }
func (e *abandonedError) Unwrap() error { return e.cause }

// isAbandoned reports whether err (or an error it wraps) comes from a call
// await gave up on: the channel the call was made on, if any, is no longer
// the caller's.
func isAbandoned(err error) bool {
	var ae *abandonedError
	return errors.As(err, &ae)
}

// openChannel opens a channel on conn with await: a channel that opens only
// after ctx ended is closed.
func openChannel(ctx context.Context, conn *amqp.Connection) (*amqp.Channel, error) {
	return await(ctx, conn.Channel, func(ch *amqp.Channel, err error) {
		if err == nil {
			_ = ch.Close()
		}
	})
}

// chanCall runs rpc, which calls synchronous methods of ch, with await.
// After an error matching isAbandoned, ch is no longer the caller's: it is
// closed once rpc returns (or at once, in the background, when rpc was not
// called).
func chanCall(ctx context.Context, ch *amqp.Channel, rpc func() error) error {
	_, err := await(ctx, func() (struct{}, error) { return struct{}{}, rpc() },
		func(struct{}, error) { _ = ch.Close() })
	return err
}

// release closes ch, a channel used for a few requests, waiting for the
// broker's close-ok until ctx ends at most; the close goes on in the
// background after that (or starts there, when ctx has ended already).
func release(ctx context.Context, ch *amqp.Channel) {
	// When ctx ends first, chanCall closes ch again once this Close
	// returns, which is harmless: the channel is closed then.
	_ = chanCall(ctx, ch, ch.Close)
}
