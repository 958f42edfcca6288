package broker

import (
	"context"
	"fmt"
)

// DefaultConcurrency is the number of handlers a subscription runs at once
// when Subscription.Concurrency is zero.
const DefaultConcurrency = 16

// MaxConcurrency is the largest Subscription.Concurrency accepted. Each
// unit is a handler goroutine (and, on RabbitMQ, prefetched deliveries), so
// a larger value is a mistake, not a tuning choice.
const MaxConcurrency = 10_000

// Publisher sends messages to a broker.
//
// Publish returns nil only after the broker durably accepted every message.
// Messages are validated first (see Message.Validate); an invalid batch is
// rejected whole with an error wrapping ErrEmptyTopic or ErrMessageTooLarge and nothing
// is sent. When the broker accepted some messages and not others, the error is
// a *PublishError listing the failures. Messages of one call that share a Key
// are accepted in argument order. Publish is safe for concurrent use and honours
// ctx: a cancelled ctx returns an error, and the messages not yet acknowledged
// must be treated as not sent.
type Publisher interface {
	Publish(ctx context.Context, msgs ...Message) error
}

// Subscription says what to consume and how.
type Subscription struct {
	// Topic to consume. Required.
	Topic string
	// Group is the durable consumer group name. Every group receives every
	// message of the topic; the members of one group (each Subscribe call is a
	// member) share the messages. Required.
	Group string
	// Concurrency is the maximum number of handlers this member runs at once.
	// Zero means DefaultConcurrency; it must not be negative or above
	// MaxConcurrency. Messages with the same key never run concurrently,
	// whatever this value.
	Concurrency int
}

// Validate reports a missing topic or group, or a concurrency that is
// negative or above MaxConcurrency.
func (s Subscription) Validate() error {
	switch {
	case s.Topic == "":
		return ErrEmptyTopic
	case s.Group == "":
		return ErrEmptyGroup
	case s.Concurrency < 0:
		return fmt.Errorf("%w: concurrency %d < 0", ErrInvalidSubscription, s.Concurrency)
	case s.Concurrency > MaxConcurrency:
		return fmt.Errorf("%w: concurrency %d above MaxConcurrency (%d)", ErrInvalidSubscription, s.Concurrency, MaxConcurrency)
	}
	return nil
}

// Subscriber consumes messages.
//
// Subscribe joins sub.Group as a new member and calls h for each message until
// ctx is cancelled or consumption fails for good. Each call is a separate
// member, so calling Subscribe several times with one group makes competing
// consumers. On cancellation it stops fetching, waits for running handlers,
// records their acks, and returns nil. Handlers receive a context that is not
// cancelled when ctx is, so work in flight can finish; adapters cancel it only
// after their documented drain timeout. An invalid subscription or a nil handler
// returns an error wrapping ErrEmptyTopic, ErrEmptyGroup,
// ErrInvalidSubscription or ErrNilHandler at once.
type Subscriber interface {
	Subscribe(ctx context.Context, sub Subscription, h Handler) error
}

// Handler processes one delivery. Returning nil acknowledges it; returning an
// error asks for redelivery (or whatever the retry and dead-letter middleware
// around it decides).
type Handler func(ctx context.Context, d Delivery) error

// Middleware wraps a Handler with cross-cutting behaviour: retries,
// deduplication, tracing, metrics.
type Middleware func(Handler) Handler

// Chain wraps h with mws. The first middleware is the outermost: it sees the
// delivery first and the result last.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		if mws[i] != nil {
			h = mws[i](h)
		}
	}
	return h
}
