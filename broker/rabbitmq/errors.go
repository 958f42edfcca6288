package rabbitmq

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/steadfast-go/steadfast/broker"
)

// Sentinel errors. Errors returned by this package wrap them (and the
// broker package's sentinels), so callers test with errors.Is.
var (
	// ErrUnroutable: a message published with the mandatory flag reached an
	// exchange that routed it to no queue, and the broker returned it. The
	// message was not enqueued anywhere.
	ErrUnroutable = errors.New("rabbitmq: message unroutable")
	// ErrNacked: the broker refused a message with a negative publisher
	// confirm (for example a queue with overflow=reject-publish is full).
	ErrNacked = errors.New("rabbitmq: message nacked by the broker")
	// ErrConnectionLost: the connection or channel carrying a message failed
	// before the broker confirmed it; the message may or may not have been
	// enqueued. It wraps broker.ErrUnavailable.
	ErrConnectionLost = fmt.Errorf("rabbitmq: connection lost: %w", broker.ErrUnavailable)
	// ErrTopologyConflict: a declaration conflicts with an existing exchange
	// or queue of the same name declared with other properties (the broker's
	// PRECONDITION_FAILED, reply code 406).
	ErrTopologyConflict = errors.New("rabbitmq: declaration conflicts with the existing one")
	// ErrInvalidTopology: a topology or retry chain is malformed; nothing was
	// declared.
	ErrInvalidTopology = errors.New("rabbitmq: invalid topology")
	// ErrNotFound: an exchange or queue a declaration, publish or consumer
	// refers to does not exist (the broker's NOT_FOUND, reply code 404).
	ErrNotFound = errors.New("rabbitmq: not found")
	// ErrConsumerCancelled: the broker cancelled a consumer, typically
	// because its queue was deleted. Subscribe returns it.
	ErrConsumerCancelled = errors.New("rabbitmq: consumer cancelled by the broker")
	// ErrInvalidConfig: a Config, PublisherConfig or SubscriberConfig field
	// is out of range.
	ErrInvalidConfig = errors.New("rabbitmq: invalid config")
)

// DeclareError reports a failed declaration of one exchange, queue or
// binding. It matches ErrTopologyConflict with errors.Is when the broker
// refused the declaration because an entity of that name exists with other
// properties, and ErrNotFound when a binding names a missing exchange or
// queue. errors.As reaches the underlying *amqp091.Error.
type DeclareError struct {
	// Entity is "exchange", "queue" or "binding".
	Entity string
	// Name is the exchange or queue name, or "queue <- exchange [key]" for a
	// binding.
	Name string
	Err  error
}

func (e *DeclareError) Error() string {
	what := "failed"
	switch {
	case errors.Is(e, ErrTopologyConflict):
		what = "conflicts with the existing " + e.Entity + " of that name"
	case errors.Is(e, ErrNotFound):
		what = "refers to a missing exchange or queue"
	}
	return fmt.Sprintf("rabbitmq: declare %s %s: %s: %v", e.Entity, e.Name, what, e.Err)
}

func (e *DeclareError) Unwrap() error { return e.Err }

// Is reports ErrTopologyConflict for PRECONDITION_FAILED and ErrNotFound for
// NOT_FOUND replies.
func (e *DeclareError) Is(target error) bool {
	switch target {
	case ErrTopologyConflict:
		return amqpCode(e.Err) == amqp.PreconditionFailed
	case ErrNotFound:
		return amqpCode(e.Err) == amqp.NotFound
	}
	return false
}

// amqpCode returns the AMQP reply code of err, or 0.
func amqpCode(err error) int {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}
