package rabbitmq

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ExchangeKind is the routing algorithm of an exchange.
type ExchangeKind string

// Exchange kinds.
const (
	// ExchangeDirect routes on an exact routing-key match.
	ExchangeDirect ExchangeKind = "direct"
	// ExchangeTopic routes on dot-separated routing-key patterns with * and #.
	ExchangeTopic ExchangeKind = "topic"
	// ExchangeFanout routes every message to every bound queue.
	ExchangeFanout ExchangeKind = "fanout"
	// ExchangeHeaders routes on message headers matched against binding
	// arguments (x-match all or any).
	ExchangeHeaders ExchangeKind = "headers"
)

// QueueType is the RabbitMQ queue implementation.
type QueueType string

// Queue types.
const (
	// QueueClassic is RabbitMQ's classic queue: a single replica, the fastest
	// for persistent messages on one node.
	QueueClassic QueueType = "classic"
	// QueueQuorum is the Raft-replicated queue: durable only, with a
	// delivery counter (x-delivery-count) and a delivery limit.
	QueueQuorum QueueType = "quorum"
)

// Exchange describes an exchange to declare. The zero value of every field
// but Name is the common choice: a durable topic exchange.
type Exchange struct {
	// Name of the exchange. Required.
	Name string
	// Kind defaults to ExchangeTopic.
	Kind ExchangeKind
	// Transient exchanges do not survive a broker restart. Default: durable.
	Transient bool
	// AutoDelete deletes the exchange when its last binding is removed.
	AutoDelete bool
	// Internal exchanges accept messages only from other exchanges.
	Internal bool
	// AlternateExchange receives the messages this exchange cannot route.
	AlternateExchange string
	// Args are extra declaration arguments. A key that a field above also
	// sets is an error.
	Args amqp.Table
}

// Queue describes a queue to declare. The zero value of every field but Name
// is a durable queue of the broker's default type (classic).
type Queue struct {
	// Name of the queue. Required: server-named queues cannot be declared
	// again after a reconnect.
	Name string
	// Type is sent as x-queue-type when set; empty leaves the broker default
	// (classic).
	Type QueueType
	// Transient queues do not survive a broker restart. Default: durable.
	Transient bool
	// Exclusive queues belong to the declaring connection and are deleted
	// with it.
	Exclusive bool
	// AutoDelete deletes the queue when its last consumer is cancelled.
	AutoDelete bool
	// DeadLetterExchange (x-dead-letter-exchange) receives the messages this
	// queue rejects (nack without requeue), expires or drops on overflow.
	DeadLetterExchange string
	// DeadLetterRoutingKey (x-dead-letter-routing-key) replaces the routing
	// key of dead-lettered messages; empty keeps the message's own.
	DeadLetterRoutingKey string
	// MessageTTL (x-message-ttl, whole milliseconds) expires messages that
	// waited this long. Zero means no TTL.
	MessageTTL time.Duration
	// MaxLength (x-max-length) bounds the number of ready messages. Zero
	// means unbounded.
	MaxLength int64
	// SingleActiveConsumer (x-single-active-consumer) delivers to one
	// consumer at a time; the others take over, in order, when it stops.
	SingleActiveConsumer bool
	// DeliveryLimit (x-delivery-limit, quorum queues only) dead-letters a
	// message after this many returns to the queue. Zero means no limit.
	DeliveryLimit int
	// Args are extra declaration arguments. A key that a field above also
	// sets is an error.
	Args amqp.Table
}

// Binding routes messages from an exchange to a queue.
type Binding struct {
	// Exchange is the source exchange. Required.
	Exchange string
	// Queue is the destination queue. Required.
	Queue string
	// Key is the binding key: a routing key for direct exchanges, a pattern
	// for topic exchanges, ignored by fanout and headers exchanges.
	Key string
	// Args are binding arguments (x-match and header values for headers
	// exchanges).
	Args amqp.Table
}

// Topology is a set of exchanges, queues and bindings declared together:
// exchanges first, then queues, then bindings. Declaring is idempotent: an
// entity that already exists with the same properties is left alone, and one
// that exists with other properties is a *DeclareError matching
// ErrTopologyConflict.
type Topology struct {
	Exchanges []Exchange
	Queues    []Queue
	Bindings  []Binding
}

// Merge returns t followed by the entities of others.
func (t Topology) Merge(others ...Topology) Topology {
	out := Topology{
		Exchanges: append([]Exchange(nil), t.Exchanges...),
		Queues:    append([]Queue(nil), t.Queues...),
		Bindings:  append([]Binding(nil), t.Bindings...),
	}
	for _, o := range others {
		out.Exchanges = append(out.Exchanges, o.Exchanges...)
		out.Queues = append(out.Queues, o.Queues...)
		out.Bindings = append(out.Bindings, o.Bindings...)
	}
	return out
}

// Validate reports the first malformed entity, wrapping ErrInvalidTopology.
func (t Topology) Validate() error {
	for _, e := range t.Exchanges {
		if err := e.validate(); err != nil {
			return err
		}
	}
	for _, q := range t.Queues {
		if err := q.validate(); err != nil {
			return err
		}
	}
	for _, b := range t.Bindings {
		if b.Exchange == "" || b.Queue == "" {
			return fmt.Errorf("%w: binding %q <- %q needs an exchange and a queue", ErrInvalidTopology, b.Queue, b.Exchange)
		}
	}
	return nil
}

func validName(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: %s without a name", ErrInvalidTopology, what)
	case len(name) > 255:
		return fmt.Errorf("%w: %s name %.40q... longer than 255 bytes", ErrInvalidTopology, what, name)
	}
	return nil
}

func (e Exchange) kind() ExchangeKind {
	if e.Kind == "" {
		return ExchangeTopic
	}
	return e.Kind
}

func (e Exchange) validate() error {
	if err := validName("exchange", e.Name); err != nil {
		return err
	}
	switch e.kind() {
	case ExchangeDirect, ExchangeTopic, ExchangeFanout, ExchangeHeaders:
	default:
		return fmt.Errorf("%w: exchange %q has unknown kind %q", ErrInvalidTopology, e.Name, e.Kind)
	}
	_, err := e.args()
	return err
}

func (e Exchange) args() (amqp.Table, error) {
	a := amqp.Table{}
	for k, v := range e.Args {
		a[k] = v
	}
	if e.AlternateExchange != "" {
		if _, dup := a["alternate-exchange"]; dup {
			return nil, fmt.Errorf("%w: exchange %q sets alternate-exchange twice", ErrInvalidTopology, e.Name)
		}
		a["alternate-exchange"] = e.AlternateExchange
	}
	if len(a) == 0 {
		return nil, nil
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("%w: exchange %q arguments: %v", ErrInvalidTopology, e.Name, err)
	}
	return a, nil
}

func (q Queue) validate() error {
	if err := validName("queue", q.Name); err != nil {
		return err
	}
	switch q.Type {
	case "", QueueClassic:
	case QueueQuorum:
		if q.Transient || q.Exclusive || q.AutoDelete {
			return fmt.Errorf("%w: quorum queue %q must be durable, not exclusive, not auto-delete", ErrInvalidTopology, q.Name)
		}
	default:
		return fmt.Errorf("%w: queue %q has unknown type %q", ErrInvalidTopology, q.Name, q.Type)
	}
	if q.DeliveryLimit != 0 && q.Type != QueueQuorum {
		return fmt.Errorf("%w: queue %q: a delivery limit needs a quorum queue", ErrInvalidTopology, q.Name)
	}
	if q.MessageTTL < 0 || q.MaxLength < 0 || q.DeliveryLimit < 0 {
		return fmt.Errorf("%w: queue %q has a negative TTL, length or delivery limit", ErrInvalidTopology, q.Name)
	}
	if q.MessageTTL > 0 && q.MessageTTL < time.Millisecond {
		return fmt.Errorf("%w: queue %q: message TTL %v is below the broker's 1ms resolution", ErrInvalidTopology, q.Name, q.MessageTTL)
	}
	_, err := q.args()
	return err
}

func (q Queue) args() (amqp.Table, error) {
	a := amqp.Table{}
	for k, v := range q.Args {
		a[k] = v
	}
	set := func(k string, v any) error {
		if _, dup := a[k]; dup {
			return fmt.Errorf("%w: queue %q sets %s both as a field and in Args", ErrInvalidTopology, q.Name, k)
		}
		a[k] = v
		return nil
	}
	var errs []error
	if q.Type != "" {
		errs = append(errs, set("x-queue-type", string(q.Type)))
	}
	if q.DeadLetterExchange != "" {
		errs = append(errs, set("x-dead-letter-exchange", q.DeadLetterExchange))
	}
	if q.DeadLetterRoutingKey != "" {
		errs = append(errs, set("x-dead-letter-routing-key", q.DeadLetterRoutingKey))
	}
	if q.MessageTTL > 0 {
		errs = append(errs, set("x-message-ttl", q.MessageTTL.Milliseconds()))
	}
	if q.MaxLength > 0 {
		errs = append(errs, set("x-max-length", q.MaxLength))
	}
	if q.SingleActiveConsumer {
		errs = append(errs, set("x-single-active-consumer", true))
	}
	if q.DeliveryLimit > 0 {
		errs = append(errs, set("x-delivery-limit", int64(q.DeliveryLimit)))
	}
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	if len(a) == 0 {
		return nil, nil
	}
	if err := a.Validate(); err != nil {
		return nil, fmt.Errorf("%w: queue %q arguments: %v", ErrInvalidTopology, q.Name, err)
	}
	return a, nil
}

func (b Binding) String() string {
	return fmt.Sprintf("%q <- %q [%s]", b.Queue, b.Exchange, b.Key)
}

// declarer declares entities on a channel it reopens after each channel
// error, so that one failed declaration does not stop the others when the
// caller wants to go on. Its requests return when their ctx ends, even
// while the broker does not answer (see await).
type declarer struct {
	open func(context.Context) (*amqp.Channel, error)
	ch   *amqp.Channel
}

func (d *declarer) channel(ctx context.Context) (*amqp.Channel, error) {
	if d.ch != nil && !d.ch.IsClosed() {
		return d.ch, nil
	}
	ch, err := d.open(ctx)
	if err != nil {
		return nil, err
	}
	d.ch = ch
	return ch, nil
}

// call runs rpc on the declarer's channel, opened when needed, with
// chanCall. opened is false when no channel could be opened; err then says
// why. A channel whose request was abandoned (ctx ended) is forgotten:
// chanCall closes it once the broker answers.
func (d *declarer) call(ctx context.Context, rpc func(ch *amqp.Channel) error) (opened bool, err error) {
	ch, err := d.channel(ctx)
	if err != nil {
		return false, err
	}
	err = chanCall(ctx, ch, func() error { return rpc(ch) })
	if isAbandoned(err) {
		d.ch = nil
	}
	return true, err
}

// close closes the declarer's channel, waiting for the broker until ctx
// ends at most (see release).
func (d *declarer) close(ctx context.Context) {
	if d.ch != nil {
		release(ctx, d.ch)
		d.ch = nil
	}
}

// declare declares every entity of t and calls onErr for each failure; it
// stops at the first failure when onErr returns false. Errors opening a
// channel (the connection is down) are returned at once, and so is a
// *DeclareError wrapping ctx's cause when ctx ends while the broker has not
// answered a declaration.
func (d *declarer) declare(ctx context.Context, t Topology, onErr func(error) bool) error {
	// one declares an entity with rpc; stop ends the declaration, with err.
	one := func(entity, name string, rpc func(ch *amqp.Channel) error) (stop bool, err error) {
		opened, err := d.call(ctx, rpc)
		switch {
		case err == nil:
			return false, nil
		case !opened:
			return true, err
		case isAbandoned(err):
			return true, &DeclareError{Entity: entity, Name: name, Err: err}
		}
		return !onErr(&DeclareError{Entity: entity, Name: name, Err: err}), nil
	}
	for _, e := range t.Exchanges {
		args, _ := e.args()
		if stop, err := one("exchange", fmt.Sprintf("%q (%s)", e.Name, e.kind()), func(ch *amqp.Channel) error {
			return ch.ExchangeDeclare(e.Name, string(e.kind()), !e.Transient, e.AutoDelete, e.Internal, false, args)
		}); stop {
			return err
		}
	}
	for _, q := range t.Queues {
		args, _ := q.args()
		if stop, err := one("queue", fmt.Sprintf("%q", q.Name), func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(q.Name, !q.Transient, q.AutoDelete, q.Exclusive, false, args)
			return err
		}); stop {
			return err
		}
	}
	for _, b := range t.Bindings {
		if stop, err := one("binding", b.String(), func(ch *amqp.Channel) error {
			return ch.QueueBind(b.Queue, b.Key, b.Exchange, false, b.Args)
		}); stop {
			return err
		}
	}
	return nil
}

// registry remembers declared entities, without duplicates, in declaration
// order, so they can be declared again after a reconnect.
type registry struct {
	exchanges []Exchange
	queues    []Queue
	bindings  []Binding
	exIdx     map[string]int
	qIdx      map[string]int
	bIdx      map[string]int
}

func bindingKey(b Binding) string {
	return b.Exchange + "\x00" + b.Queue + "\x00" + b.Key + "\x00" + fmt.Sprint(b.Args)
}

func (r *registry) add(t Topology) {
	if r.exIdx == nil {
		r.exIdx, r.qIdx, r.bIdx = map[string]int{}, map[string]int{}, map[string]int{}
	}
	for _, e := range t.Exchanges {
		if i, ok := r.exIdx[e.Name]; ok {
			r.exchanges[i] = e
			continue
		}
		r.exIdx[e.Name] = len(r.exchanges)
		r.exchanges = append(r.exchanges, e)
	}
	for _, q := range t.Queues {
		if i, ok := r.qIdx[q.Name]; ok {
			r.queues[i] = q
			continue
		}
		r.qIdx[q.Name] = len(r.queues)
		r.queues = append(r.queues, q)
	}
	for _, b := range t.Bindings {
		k := bindingKey(b)
		if _, ok := r.bIdx[k]; ok {
			continue
		}
		r.bIdx[k] = len(r.bindings)
		r.bindings = append(r.bindings, b)
	}
}

// remove forgets the entities of t and every binding that refers to its
// exchanges and queues.
func (r *registry) remove(t Topology) {
	gone := map[string]bool{}
	goneQ := map[string]bool{}
	for _, e := range t.Exchanges {
		gone[e.Name] = true
	}
	for _, q := range t.Queues {
		goneQ[q.Name] = true
	}
	goneB := map[string]bool{}
	for _, b := range t.Bindings {
		goneB[bindingKey(b)] = true
	}
	var rest Topology
	for _, e := range r.exchanges {
		if !gone[e.Name] {
			rest.Exchanges = append(rest.Exchanges, e)
		}
	}
	for _, q := range r.queues {
		if !goneQ[q.Name] {
			rest.Queues = append(rest.Queues, q)
		}
	}
	for _, b := range r.bindings {
		if !gone[b.Exchange] && !goneQ[b.Queue] && !goneB[bindingKey(b)] {
			rest.Bindings = append(rest.Bindings, b)
		}
	}
	*r = registry{}
	r.add(rest)
}

func (r *registry) topology() Topology {
	return Topology{
		Exchanges: append([]Exchange(nil), r.exchanges...),
		Queues:    append([]Queue(nil), r.queues...),
		Bindings:  append([]Binding(nil), r.bindings...),
	}
}
