package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.opentelemetry.io/otel/metric"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency/internal/outcome"
)

// ConsumerConfig configures the consumer middleware (Consumer) and the
// Postgres transactional handler. The zero value is ready to use.
type ConsumerConfig struct {
	// Consumer names the logical consumer; keys are deduplicated within it,
	// so two consumers of one message each process it once. Default: the
	// delivery's consumer group (Delivery.Group). Renaming the consumer or
	// the group starts from an empty history.
	Consumer string
	// Key derives the key of a delivery. Default MessageID.
	Key KeyFunc
	// OnDuplicate, when set, is called for each delivery acknowledged
	// without running the handler because its key was done before (after
	// the store said so, before the acknowledgement), so callers can count
	// or log duplicates. It must not block for long.
	OnDuplicate func(ctx context.Context, d broker.Delivery)
	// Logger receives one line per failure to end a lease (Warn) and per
	// duplicate or in-progress delivery (Debug). Default slog.Default().
	Logger *slog.Logger
	// MeterProvider receives the steadfast.idempotency.outcomes counter,
	// tagged with kind=consumer and outcome. Default: the OpenTelemetry
	// global provider.
	MeterProvider metric.MeterProvider
}

// KeyOf returns the scope and key deduplicating d: the Consumer (or the
// delivery's group) and the Key function's result. Errors wrap ErrNoKey or
// ErrInvalidKey.
func (c ConsumerConfig) KeyOf(d broker.Delivery) (scope, key string, err error) {
	scope = c.Consumer
	if scope == "" {
		scope = d.Group
	}
	kf := c.Key
	if kf == nil {
		kf = MessageID
	}
	key, err = kf(d)
	if err != nil {
		return scope, key, fmt.Errorf("idempotency: key of message %q: %w", d.ID, err)
	}
	if err := CheckKey(scope, key); err != nil {
		return scope, key, fmt.Errorf("idempotency: message %q: %w", d.ID, err)
	}
	return scope, key, nil
}

// Consumer returns middleware that makes a broker.Handler idempotent with
// store. For each delivery it derives the key (ConsumerConfig.KeyOf), then:
//
//   - a key completed before: the delivery is acknowledged (nil) without
//     calling the handler;
//   - a key another worker holds right now: the middleware returns an error
//     wrapping ErrInProgress without calling the handler, so the broker
//     redelivers it later, when the other worker has either finished (the
//     redelivery is then a duplicate) or failed (it is then processed);
//   - a free key: the handler runs while the key is held. Success marks the
//     key done; an error (or a panic) releases it, so the redelivery runs the
//     handler again. A failed handler never marks its key.
//   - no key (ErrNoKey), a bad key (ErrInvalidKey) or a store failure: the
//     handler does not run and the error is returned.
//
// Guarantee, for a store that does not lose writes: however many times and
// however concurrently a message is delivered, no two handlers run for one
// key at once while the first one's lease lasts (Redis and memory:
// Config.Lease; Postgres: as long as the holder's connection), and once a
// handler returned nil and the key was marked done, no delivery of the key
// runs the handler again while the store keeps the key. The handler's effect
// is still at least once: if the process dies after the effect but before
// the key is marked done, the redelivery runs it again. To make the effect
// and the mark atomic, keep the effect in Postgres and use the Postgres
// store's Handler, which claims the key in the effect's transaction.
//
// If marking the key done fails after the handler succeeded, the delivery is
// still acknowledged (redelivering it would repeat the effect) and the
// failure is logged; the key then stays held until the store's lease time
// ends.
//
// Consumer returns ErrNilStore when store is nil.
func Consumer(store Store, cfg ConsumerConfig) (broker.Middleware, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	rec := outcome.New("consumer", cfg.Logger, cfg.MeterProvider)
	return func(next broker.Handler) broker.Handler {
		return func(ctx context.Context, d broker.Delivery) error {
			return consume(ctx, store, cfg, rec, next, d)
		}
	}, nil
}

func consume(ctx context.Context, store Store, cfg ConsumerConfig, rec *outcome.Recorder, next broker.Handler, d broker.Delivery) (err error) {
	scope, key, err := cfg.KeyOf(d)
	if err != nil {
		rec.Record(ctx, outcome.Error, scope, key)
		return err
	}
	lease, done, err := store.Acquire(ctx, scope, key, nil)
	switch {
	case errors.Is(err, ErrInProgress):
		rec.Record(ctx, outcome.InProgress, scope, key)
		rec.Log.DebugContext(ctx, "idempotency: message in progress elsewhere, retry later",
			"scope", scope, "key", key, "message_id", d.ID)
		return fmt.Errorf("idempotency: message %q (scope %q, key %q): %w", d.ID, scope, key, err)
	case err != nil:
		rec.Record(ctx, outcome.Error, scope, key)
		return fmt.Errorf("idempotency: acquire message %q (scope %q, key %q): %w", d.ID, scope, key, err)
	case done != nil:
		rec.Record(ctx, outcome.Duplicate, scope, key)
		rec.Log.DebugContext(ctx, "idempotency: duplicate message acknowledged",
			"scope", scope, "key", key, "message_id", d.ID)
		if cfg.OnDuplicate != nil {
			cfg.OnDuplicate(ctx, d)
		}
		return nil
	}

	ok := false
	defer func() {
		if ok {
			return
		}
		// The handler failed or panicked: free the key so the redelivery runs.
		cctx, cancel := detached(ctx)
		defer cancel()
		if rerr := lease.Release(cctx); rerr != nil {
			rec.Log.WarnContext(ctx, "idempotency: release after failed handler",
				"scope", scope, "key", key, "message_id", d.ID, "error", rerr)
		}
		rec.Record(ctx, outcome.Failed, scope, key)
	}()
	if err := next(ctx, d); err != nil {
		return err
	}
	ok = true

	cctx, cancel := detached(ctx)
	defer cancel()
	if cerr := lease.Complete(cctx, nil); cerr != nil {
		rec.Log.WarnContext(ctx, "idempotency: handler succeeded but the key could not be marked done",
			"scope", scope, "key", key, "message_id", d.ID, "error", cerr)
	}
	rec.Record(ctx, outcome.Processed, scope, key)
	return nil
}
