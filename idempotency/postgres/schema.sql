-- steadfast idempotency keys (github.com/steadfast-go/steadfast/idempotency/postgres).
-- One row per key completed by a consumer (scope) or an HTTP API. A row is
-- inserted by the transaction that does the work, so it exists only once that
-- transaction committed. Safe to run repeatedly.
CREATE TABLE IF NOT EXISTS steadfast_idempotency (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint bytea,
    response    bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
-- Retention cleanup deletes the oldest rows.
CREATE INDEX IF NOT EXISTS steadfast_idempotency_created_at_idx
    ON steadfast_idempotency (created_at);
