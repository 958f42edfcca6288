package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/idempotency"
	"github.com/steadfast-go/steadfast/idempotency/internal/outcome"
)

// TxHandler processes one delivery inside tx, the transaction that also
// claims the delivery's key. It must not commit or roll back tx.
type TxHandler func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error

// Handler returns a broker.Handler that processes each message exactly once
// per consumer in Postgres terms: for every delivery it begins a transaction
// (Config.TxOptions), claims the delivery's key (cfg.KeyOf: the consumer
// name, or the delivery's group, and the Key function, default the message
// ID), runs h in the transaction, and commits. So:
//
//   - the effect h writes through tx and the key are committed together:
//     a redelivery after the commit (the process died before the broker ack)
//     finds the key and is acknowledged without calling h (cfg.OnDuplicate
//     is told);
//   - h returning an error, panicking, or the process dying before the
//     commit rolls both back: the redelivery runs h again;
//   - a commit that fails returns its error: the redelivery then finds the
//     key if the commit did happen, and runs h otherwise;
//   - a delivery whose key is claimed by a transaction still running (the
//     same message delivered twice at once) returns an error wrapping
//     idempotency.ErrInProgress (at once, or after Config.Wait), so the
//     broker redelivers it later;
//   - a delivery with no key (idempotency.ErrNoKey) or a bad one
//     (idempotency.ErrInvalidKey) returns that error without calling h.
//
// Effects outside tx (HTTP calls, other databases, publishing) are at least
// once: use the outbox to publish from tx. Each delivery in flight holds one
// pool connection. cfg.Logger and cfg.MeterProvider record outcomes as the
// consumer middleware does. Handler returns broker.ErrNilHandler for a nil h.
func (s *Store) Handler(cfg idempotency.ConsumerConfig, h TxHandler) (broker.Handler, error) {
	if h == nil {
		return nil, broker.ErrNilHandler
	}
	rec := outcome.New("consumer", cfg.Logger, cfg.MeterProvider)
	return func(ctx context.Context, d broker.Delivery) error {
		return s.handle(ctx, cfg, rec, h, d)
	}, nil
}

func (s *Store) handle(ctx context.Context, cfg idempotency.ConsumerConfig, rec *outcome.Recorder, h TxHandler, d broker.Delivery) (err error) {
	scope, key, err := cfg.KeyOf(d)
	if err != nil {
		rec.Record(ctx, outcome.Error, scope, key)
		return err
	}
	tx, err := s.pool.BeginTx(ctx, s.cfg.TxOptions)
	if err != nil {
		rec.Record(ctx, outcome.Error, scope, key)
		return fmt.Errorf("idempotency/postgres: message %q: begin: %w", d.ID, err)
	}
	committed := false
	defer func() {
		if committed {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if rerr := tx.Rollback(rctx); rerr != nil && !errors.Is(rerr, pgx.ErrTxClosed) {
			rec.Log.WarnContext(ctx, "idempotency: rollback", "scope", scope, "key", key, "error", rerr)
		}
	}()

	claimed, _, err := s.claim(ctx, tx, scope, key, nil, false)
	switch {
	case errors.Is(err, idempotency.ErrInProgress):
		rec.Record(ctx, outcome.InProgress, scope, key)
		rec.Log.DebugContext(ctx, "idempotency: message in progress elsewhere, retry later",
			"scope", scope, "key", key, "message_id", d.ID)
		return fmt.Errorf("idempotency/postgres: message %q: %w", d.ID, err)
	case err != nil:
		rec.Record(ctx, outcome.Error, scope, key)
		return fmt.Errorf("idempotency/postgres: message %q: %w", d.ID, err)
	case !claimed:
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
		if !ok {
			rec.Record(ctx, outcome.Failed, scope, key)
		}
	}()
	if err := h(ctx, tx, d); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("idempotency/postgres: message %q: commit: %w", d.ID, err)
	}
	committed, ok = true, true
	rec.Record(ctx, outcome.Processed, scope, key)
	return nil
}
