package cqrs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/internal/telemetry"
)

// Headers of commands, queries and replies over the broker.
const (
	HeaderKind    = broker.ReservedHeaderPrefix + "cqrs-kind"
	HeaderName    = broker.ReservedHeaderPrefix + "cqrs-name"
	HeaderReplyTo = broker.ReservedHeaderPrefix + "cqrs-reply-to"
	// HeaderError carries a failed handler's error text on a reply;
	// HeaderErrorKind names the sentinel it wrapped ("unregistered",
	// "invalid", "validation"), if any.
	HeaderError     = broker.ReservedHeaderPrefix + "cqrs-error"
	HeaderErrorKind = broker.ReservedHeaderPrefix + "cqrs-error-kind"
)

// DefaultRequestTimeout is a Client's Timeout when zero.
const DefaultRequestTimeout = 30 * time.Second

func kindOf(s string) Kind {
	switch s {
	case "command":
		return KindCommand
	case "query":
		return KindQuery
	}
	return 0
}

// Handler returns a broker handler that serves the bus's commands and
// queries from a subscription: it decodes each message (headers HeaderKind
// and HeaderName, a JSON payload), dispatches it through the middleware
// and, when the message names a reply topic (HeaderReplyTo), publishes the
// result or the error there with the request's ID as correlation ID, then
// acknowledges. A request without a reply topic (a command posted fire and
// forget) that fails returns the error, so the subscription's retry and
// dead-letter policy applies; a malformed or unregistered one fails with
// ErrInvalidMessage or ErrUnregistered. Delivery is at least once: make
// command handlers idempotent (a decider keyed by the command's ID).
func (b *Bus) Handler(pub broker.Publisher) broker.Handler {
	return func(ctx context.Context, d broker.Delivery) error {
		kind := kindOf(d.Header(HeaderKind))
		var v any
		var err error
		if kind == 0 || d.Header(HeaderName) == "" {
			err = fmt.Errorf("%w: message %q: missing or bad %s / %s headers", ErrInvalidMessage, d.ID, HeaderKind, HeaderName)
		} else {
			v, err = b.dispatchWire(ctx, kind, d.Header(HeaderName), d.Payload)
		}
		replyTo := d.Header(HeaderReplyTo)
		if replyTo == "" || pub == nil {
			return err
		}
		reply := broker.Message{ID: broker.NewID(), Topic: replyTo, Key: d.ID,
			Headers: map[string]string{broker.HeaderCorrelationID: d.ID, broker.HeaderCausationID: d.ID}}
		if err != nil {
			reply.Headers[HeaderError] = err.Error()
			switch {
			case errors.Is(err, ErrUnregistered):
				reply.Headers[HeaderErrorKind] = "unregistered"
			case errors.Is(err, ErrInvalidMessage):
				reply.Headers[HeaderErrorKind] = "invalid"
			case errors.Is(err, ErrValidation):
				reply.Headers[HeaderErrorKind] = "validation"
			}
		} else if reply.Payload, err = json.Marshal(v); err != nil {
			reply.Headers[HeaderError] = fmt.Sprintf("cqrs: encode the result of %q: %v", d.Header(HeaderName), err)
		}
		return pub.Publish(ctx, reply)
	}
}

// ClientConfig tunes a Client.
type ClientConfig struct {
	// ReplyTopic is where replies come back to this client. Required for
	// requests (not for Post). Each client needs a topic (or a group) of
	// its own: replies are matched to requests in memory.
	ReplyTopic string
	// Group is the reply subscription's consumer group. Default
	// ReplyTopic.
	Group string
	// Timeout bounds each request when ctx has no earlier deadline.
	// Default DefaultRequestTimeout.
	Timeout time.Duration
}

// Client sends commands and queries over a broker to a Bus served by
// Handler: Post sends a command without waiting; Call waits for the
// reply, correlated by the request's message ID, up to a timeout.
type Client struct {
	pub broker.Publisher
	sub broker.Subscriber
	cfg ClientConfig

	mu      sync.Mutex
	pending map[string]chan broker.Message
}

// NewClient returns a client publishing through pub and receiving replies
// through sub (nil when only Post is used).
func NewClient(pub broker.Publisher, sub broker.Subscriber, cfg ClientConfig) (*Client, error) {
	if pub == nil {
		return nil, fmt.Errorf("%w: nil publisher", ErrInvalidConfig)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: negative Timeout", ErrInvalidConfig)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultRequestTimeout
	}
	if cfg.Group == "" {
		cfg.Group = cfg.ReplyTopic
	}
	return &Client{pub: pub, sub: sub, cfg: cfg, pending: map[string]chan broker.Message{}}, nil
}

// Run consumes replies until ctx ends. Calls need it running.
func (c *Client) Run(ctx context.Context) error {
	if c.sub == nil || c.cfg.ReplyTopic == "" {
		return fmt.Errorf("%w: Run needs a subscriber and a ReplyTopic", ErrInvalidConfig)
	}
	return c.sub.Subscribe(ctx, broker.Subscription{Topic: c.cfg.ReplyTopic, Group: c.cfg.Group}, func(ctx context.Context, d broker.Delivery) error {
		c.mu.Lock()
		ch := c.pending[d.Header(broker.HeaderCorrelationID)]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- d.Message:
			default: // a duplicate reply
			}
		}
		return nil // replies to requests given up on, or to other clients, are dropped
	})
}

func (c *Client) message(ctx context.Context, topic, key string, kind Kind, name string, v any) (broker.Message, error) {
	payload, err := json.Marshal(v)
	if err != nil {
		return broker.Message{}, fmt.Errorf("%w: encode %s %q: %w", ErrInvalidMessage, kind, name, err)
	}
	h := telemetry.Inject(ctx, map[string]string{HeaderKind: kind.String(), HeaderName: name})
	return broker.Message{ID: broker.NewID(), Topic: topic, Key: key, Payload: payload, Headers: h}, nil
}

// Post publishes command cmd, registered as name on the serving bus, to
// topic keyed by its target (key: the stream or entity it addresses, so a
// target's commands keep their order), without waiting for its result.
func (c *Client) Post(ctx context.Context, topic, key, name string, cmd any) error {
	m, err := c.message(ctx, topic, key, KindCommand, name, cmd)
	if err != nil {
		return err
	}
	return c.pub.Publish(ctx, m)
}

// Call publishes a command or query v, registered as name on the serving
// bus, to topic keyed by key, and waits for the reply: the handler's result
// decoded into R (a Result for a command), or its error wrapping ErrRemote
// (and ErrUnregistered, ErrInvalidMessage or ErrValidation when the remote
// side's error wrapped them). No reply within the Timeout (or before ctx
// ends) fails with ErrTimeout.
func Call[R any](ctx context.Context, c *Client, topic, key string, kind Kind, name string, v any) (R, error) {
	var zero R
	if c.cfg.ReplyTopic == "" {
		return zero, fmt.Errorf("%w: requests need a ReplyTopic", ErrInvalidConfig)
	}
	m, err := c.message(ctx, topic, key, kind, name, v)
	if err != nil {
		return zero, err
	}
	m.Headers[HeaderReplyTo] = c.cfg.ReplyTopic
	ch := make(chan broker.Message, 1)
	c.mu.Lock()
	c.pending[m.ID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
	}()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.pub.Publish(ctx, m); err != nil {
		return zero, err
	}
	select {
	case <-ctx.Done():
		return zero, fmt.Errorf("%w: %s %q on %s: no reply: %w", ErrTimeout, kind, name, topic, ctx.Err())
	case r := <-ch:
		if e := r.Header(HeaderError); e != "" {
			var sentinel error
			switch r.Header(HeaderErrorKind) {
			case "unregistered":
				sentinel = ErrUnregistered
			case "invalid":
				sentinel = ErrInvalidMessage
			case "validation":
				sentinel = ErrValidation
			}
			if sentinel != nil {
				return zero, fmt.Errorf("%w: %w: %s", ErrRemote, sentinel, e)
			}
			return zero, fmt.Errorf("%w: %s", ErrRemote, e)
		}
		var out R
		if err := json.Unmarshal(r.Payload, &out); err != nil {
			return zero, fmt.Errorf("%w: reply to %s %q: %w", ErrInvalidMessage, kind, name, err)
		}
		return out, nil
	}
}
