package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/steadfast-go/steadfast/broker"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	outboxmem "github.com/steadfast-go/steadfast/outbox/memory"
	outboxpg "github.com/steadfast-go/steadfast/outbox/postgres"
	sagapg "github.com/steadfast-go/steadfast/saga/postgres"
)

// OrderService takes orders over HTTP. An order and its "order.placed"
// event commit together: in one PostgreSQL transaction (orderflow_orders
// and the outbox table), or in memory through the memory outbox's Tx.
type OrderService struct {
	topic string
	view  ReadModel
	tp    trace.TracerProvider

	pool *pgxpool.Pool
	pg   *outboxpg.Store

	mem  *outboxmem.Store
	mu   sync.Mutex
	rows map[string]Order
}

// ErrDuplicate: an order with this ID exists.
var ErrDuplicate = errors.New("orderflow: order exists")

// Place stores the order and enqueues its event, atomically.
func (s *OrderService) Place(ctx context.Context, o Order) error {
	b, err := json.Marshal(o)
	if err != nil {
		return err
	}
	m := broker.NewMessage(s.topic, b)
	m.Key = o.ID // an order's events are published in order
	m.Headers = map[string]string{broker.HeaderType: "order.placed"}
	if s.pool != nil {
		return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			tag, err := tx.Exec(ctx, `INSERT INTO orderflow_orders (id, customer, amount) VALUES ($1, $2, $3)
				ON CONFLICT (id) DO NOTHING`, o.ID, o.Customer, o.Amount)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return ErrDuplicate
			}
			return s.pg.Enqueue(ctx, tx, m)
		})
	}
	return s.mem.BeginFunc(ctx, func(tx *outboxmem.Tx) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.rows[o.ID]; ok {
			return ErrDuplicate
		}
		if err := tx.Enqueue(ctx, m); err != nil {
			return err
		}
		s.rows[o.ID] = o // last: nothing after it can fail
		return nil
	})
}

// Handler serves POST /orders (a JSON Order; 201, or 409 for an ID that
// exists) and GET /orders/{id} (the read model's view of the order). The
// request's W3C traceparent, if any, is continued.
func (s *OrderService) Handler(tp trace.TracerProvider) http.Handler {
	tracer := tracerOf(tp).Tracer("github.com/steadfast-go/steadfast/examples/orderflow")
	prop := propagation.TraceContext{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		ctx := prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, "POST /orders", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		var o Order
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&o); err != nil || o.ID == "" || o.Amount <= 0 ||
			len(o.ID) > 100 || strings.ContainsAny(o.ID, "/\x00") {
			http.Error(w, "want a JSON order with an id (no '/') and a positive amount", http.StatusBadRequest)
			return
		}
		span.SetAttributes(attribute.String("order.id", o.ID))
		switch err := s.Place(ctx, o); {
		case errors.Is(err, ErrDuplicate):
			http.Error(w, err.Error(), http.StatusConflict)
		case err != nil:
			span.RecordError(err)
			http.Error(w, "could not place the order", http.StatusInternalServerError)
		default:
			w.WriteHeader(http.StatusCreated)
		}
	})
	mux.HandleFunc("GET /orders/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, ok, err := s.view.Get(r.Context(), r.PathValue("id"))
		switch {
		case err != nil:
			http.Error(w, "read model unavailable", http.StatusInternalServerError)
		case !ok:
			http.Error(w, "no such order (yet)", http.StatusNotFound)
		default:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		}
	})
	return mux
}

// migrate creates the example's tables and steadfast's (idempotent).
func migrate(ctx context.Context, pool *pgxpool.Pool, ob *outboxpg.Store) error {
	if _, err := pool.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS orderflow_orders (id text PRIMARY KEY, customer text NOT NULL, amount int NOT NULL);
		CREATE TABLE IF NOT EXISTS orderflow_view (id text PRIMARY KEY, customer text NOT NULL DEFAULT '',
			amount int NOT NULL DEFAULT 0, inventory text NOT NULL DEFAULT '', payment text NOT NULL DEFAULT '',
			shipping text NOT NULL DEFAULT '')`); err != nil {
		return fmt.Errorf("orderflow: migrate: %w", err)
	}
	for _, m := range []func() error{
		func() error { return ob.Migrate(ctx) },
		func() error { return sagapg.Migrate(ctx, pool, "") },
		func() error { return sagapg.MigrateParticipants(ctx, pool, "") },
		func() error { return idempg.Migrate(ctx, pool, "") },
	} {
		if err := m(); err != nil {
			return err
		}
	}
	return nil
}
