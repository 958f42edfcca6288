package main

// The projection: a read model of orders, updated from the order events
// and the saga's replies by an idempotent consumer. It is the one file to
// change to move it onto package cqrs.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/dlq"
	"github.com/steadfast-go/steadfast/idempotency"
	idempg "github.com/steadfast-go/steadfast/idempotency/postgres"
	"github.com/steadfast-go/steadfast/saga"
)

// View is what the read model knows of an order. Each event sets its own
// fields, so events of different topics may arrive in any order.
type View struct {
	ID        string `json:"id"`
	Customer  string `json:"customer,omitempty"`
	Amount    int    `json:"amount,omitempty"`
	Inventory string `json:"inventory,omitempty"`
	Payment   string `json:"payment,omitempty"`
	Shipping  string `json:"shipping,omitempty"`
	Status    string `json:"status"`
}

// status derives the order's status from its fields.
func (v View) status() string {
	switch {
	case v.Shipping != "":
		return "shipped"
	case strings.HasPrefix(v.Payment, "refused") && v.Inventory == "released":
		return "cancelled: payment " + v.Payment
	case strings.HasPrefix(v.Payment, "refused"):
		return "payment " + v.Payment
	case v.Inventory == "released":
		return "cancelled"
	case v.Payment != "":
		return "paid"
	case v.Inventory == "reserved":
		return "inventory reserved"
	case v.Customer != "":
		return "placed"
	}
	return "unknown"
}

// ReadModel stores views.
type ReadModel interface {
	// Apply sets the non-empty fields of v on the view of v.ID.
	Apply(ctx context.Context, v View) error
	Get(ctx context.Context, id string) (View, bool, error)
}

// projectionHandler turns order events and saga replies into view
// changes, each message applied once (idempotency.Consumer; a re-applied
// change sets the same fields anyway).
func projectionHandler(rm ReadModel, store idempotency.Store, log *slog.Logger) (broker.Handler, error) {
	cfg := idempotency.ConsumerConfig{Consumer: "projection", Logger: log}
	if pg, ok := store.(*idempg.Store); ok {
		// In PostgreSQL the view change and the message's key commit in one
		// transaction: each message changes the view exactly once.
		return pg.Handler(cfg, func(ctx context.Context, tx pgx.Tx, d broker.Delivery) error {
			v, ok, err := change(d.Message)
			if err != nil || !ok {
				return err
			}
			return applyPG(ctx, tx, v)
		})
	}
	dedup, err := idempotency.Consumer(store, cfg)
	if err != nil {
		return nil, err
	}
	return dedup(func(ctx context.Context, d broker.Delivery) error {
		v, ok, err := change(d.Message)
		if err != nil || !ok {
			return err
		}
		return rm.Apply(ctx, v)
	}), nil
}

// change is the view change a message makes, if any.
func change(m broker.Message) (View, bool, error) {
	if m.Header(broker.HeaderType) == "order.placed" {
		var o Order
		if err := json.Unmarshal(m.Payload, &o); err != nil || o.ID == "" {
			// Never projectable: dead-letter middleware sets it aside at once.
			return View{}, false, dlq.Permanent(fmt.Errorf("orderflow: projection: bad order event %s: %v", m.ID, err))
		}
		return View{ID: o.ID, Customer: o.Customer, Amount: o.Amount}, true, nil
	}
	id := m.Header(saga.HeaderSagaID)
	if id == "" {
		return View{}, false, nil // not ours
	}
	v := View{ID: id}
	ok := saga.Outcome(m.Header(saga.HeaderOutcome)) == saga.OutcomeSuccess
	comp := m.Header(saga.HeaderAction) == saga.ActionCompensate
	switch step := m.Header(saga.HeaderStep); {
	case step == "reserve" && comp && ok:
		v.Inventory = "released"
	case step == "reserve" && ok:
		v.Inventory = "reserved"
	case step == "charge" && ok:
		var pid string
		_ = json.Unmarshal(m.Payload, &pid)
		v.Payment = "charged " + pid
	case step == "charge" && !comp:
		v.Payment = "refused: " + m.Header(saga.HeaderReason)
	case step == "ship" && ok:
		v.Shipping = "shipped"
	default:
		return v, false, nil
	}
	return v, true, nil
}

// memView is the read model in memory.
type memView struct {
	mu    sync.Mutex
	views map[string]View
}

func newMemView() *memView { return &memView{views: map[string]View{}} }

func (m *memView) Apply(_ context.Context, v View) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.views[v.ID]
	cur.ID = v.ID
	set := func(dst *string, s string) {
		if s != "" {
			*dst = s
		}
	}
	set(&cur.Customer, v.Customer)
	set(&cur.Inventory, v.Inventory)
	set(&cur.Payment, v.Payment)
	set(&cur.Shipping, v.Shipping)
	if v.Amount != 0 {
		cur.Amount = v.Amount
	}
	m.views[v.ID] = cur
	return nil
}

func (m *memView) Get(_ context.Context, id string) (View, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.views[id]
	v.Status = v.status()
	return v, ok, nil
}

// pgView is the read model in the orderflow_view table.
type pgView struct{ pool *pgxpool.Pool }

func (p *pgView) Apply(ctx context.Context, v View) error { return applyPG(ctx, p.pool, v) }

// applyPG upserts the view change v through db.
func applyPG(ctx context.Context, db interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, v View) error {
	_, err := db.Exec(ctx, `INSERT INTO orderflow_view AS o (id, customer, amount, inventory, payment, shipping)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (id) DO UPDATE SET
			customer = coalesce(nullif(EXCLUDED.customer, ''), o.customer),
			amount = coalesce(nullif(EXCLUDED.amount, 0), o.amount),
			inventory = coalesce(nullif(EXCLUDED.inventory, ''), o.inventory),
			payment = coalesce(nullif(EXCLUDED.payment, ''), o.payment),
			shipping = coalesce(nullif(EXCLUDED.shipping, ''), o.shipping)`,
		v.ID, v.Customer, v.Amount, v.Inventory, v.Payment, v.Shipping)
	if err != nil {
		return fmt.Errorf("orderflow: projection: %w", err)
	}
	return nil
}

func (p *pgView) Get(ctx context.Context, id string) (View, bool, error) {
	v := View{ID: id}
	err := p.pool.QueryRow(ctx, `SELECT customer, amount, inventory, payment, shipping FROM orderflow_view WHERE id = $1`, id).
		Scan(&v.Customer, &v.Amount, &v.Inventory, &v.Payment, &v.Shipping)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return v, false, nil
		}
		return v, false, err
	}
	v.Status = v.status()
	return v, true, nil
}
