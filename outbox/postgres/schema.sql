-- Outbox table of github.com/steadfast-go/steadfast/outbox/postgres.
-- The placeholders in braces are replaced with quoted identifiers derived from
-- postgres.Config.Table; Store.Schema returns the result. Every statement is
-- idempotent.

CREATE TABLE IF NOT EXISTS {table} (
    -- Order of the rows of one key; assigned at insert.
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   text        NOT NULL,
    topic        text        NOT NULL,
    key          text        NOT NULL DEFAULT '',
    payload      bytea,
    -- JSON object of strings, or NULL.
    headers      jsonb,
    message_time timestamptz NOT NULL,
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending'
                 CONSTRAINT {status_check} CHECK (status IN ('pending', 'published', 'dead')),
    -- Failed publish attempts; a pending row with attempts > 0 waits until
    -- available_at before it (and every row of its key) is claimed again.
    attempts     integer     NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT '-infinity',
    last_error   text,
    published_at timestamptz,
    parked_at    timestamptz
);

-- The relay's scan: pending rows in id order.
CREATE INDEX IF NOT EXISTS {pending_index} ON {table} (id) WHERE status = 'pending';

-- Keys blocked by a row waiting for a retry or by a parked row. Small: only
-- rows that failed at least once are in it.
CREATE INDEX IF NOT EXISTS {blocking_index} ON {table} (key, id)
    WHERE status = 'dead' OR (status = 'pending' AND attempts > 0);

-- Retention cleanup of published rows.
CREATE INDEX IF NOT EXISTS {published_index} ON {table} (published_at) WHERE status = 'published';
