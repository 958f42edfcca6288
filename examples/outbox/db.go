package main

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/broker"
	"github.com/steadfast-go/steadfast/outbox"
	outboxmem "github.com/steadfast-go/steadfast/outbox/memory"
	"github.com/steadfast-go/steadfast/outbox/postgres"
)

// db holds the orders and the outbox: PostgreSQL tables, or memory.
type db struct {
	name  string
	store outbox.Store
	begin func(ctx context.Context) (orderTx, error)
	close func()
}

// orderTx writes orders and their events; they commit, or roll back,
// together.
type orderTx interface {
	place(ctx context.Context, order, customer string, events ...broker.Message) error
	commit(ctx context.Context) error
	rollback(ctx context.Context) error
}

// inTx runs fn in a transaction, committing when it returns nil.
func (d *db) inTx(ctx context.Context, fn func(orderTx) error) error {
	tx, err := d.begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.rollback(ctx)
		return err
	}
	return tx.commit(ctx)
}

func openDB(ctx context.Context, url string) (*db, error) {
	if url == "" {
		return memoryDB(), nil
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", envURL, err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS example_orders (id text PRIMARY KEY, customer text NOT NULL, status text NOT NULL)`); err != nil {
		pool.Close()
		return nil, fmt.Errorf("create example_orders: %w", err)
	}
	store, err := postgres.New(pool, postgres.Config{Table: "example_outbox"})
	if err == nil {
		err = store.Migrate(ctx)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &db{name: "PostgreSQL", store: store, close: pool.Close,
		begin: func(ctx context.Context) (orderTx, error) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return nil, err
			}
			return &pgTx{tx: tx, store: store}, nil
		}}, nil
}

// pgTx is one PostgreSQL transaction: the order row and the outbox rows.
type pgTx struct {
	tx    pgx.Tx
	store *postgres.Store
}

func (t *pgTx) place(ctx context.Context, order, customer string, events ...broker.Message) error {
	if _, err := t.tx.Exec(ctx, `INSERT INTO example_orders (id, customer, status) VALUES ($1, $2, 'created')
		ON CONFLICT (id) DO UPDATE SET status = 'updated'`, order, customer); err != nil {
		return err
	}
	return t.store.Enqueue(ctx, t.tx, events...)
}
func (t *pgTx) commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t *pgTx) rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

// memoryDB keeps orders in a map and events in the memory outbox.
func memoryDB() *db {
	store, _ := outboxmem.New(outboxmem.Config{})
	orders := &memOrders{rows: map[string]string{}}
	return &db{name: "memory", store: store, close: func() {},
		begin: func(ctx context.Context) (orderTx, error) {
			tx, err := store.Begin(ctx)
			if err != nil {
				return nil, err
			}
			return &memTx{tx: tx, orders: orders, writes: map[string]string{}}, nil
		}}
}

type memOrders struct {
	mu   sync.Mutex
	rows map[string]string // id -> customer
}

// memTx buffers its order rows and applies them when the outbox rows
// commit (a memory transaction cannot fail at commit).
type memTx struct {
	tx     *outboxmem.Tx
	orders *memOrders
	writes map[string]string
	done   bool
}

func (t *memTx) place(ctx context.Context, order, customer string, events ...broker.Message) error {
	if t.done {
		return errors.New("transaction finished")
	}
	if err := t.tx.Enqueue(ctx, events...); err != nil {
		return err
	}
	t.writes[order] = customer
	return nil
}

func (t *memTx) commit(ctx context.Context) error {
	t.orders.mu.Lock()
	defer t.orders.mu.Unlock()
	if err := t.tx.Commit(ctx); err != nil {
		return err
	}
	t.done = true
	for id, c := range t.writes {
		t.orders.rows[id] = c
	}
	return nil
}

func (t *memTx) rollback(ctx context.Context) error {
	t.done = true
	return t.tx.Rollback(ctx)
}
