-- Event store tables of github.com/steadfast-go/steadfast/eventsource/postgres.
-- The placeholders in braces are replaced with quoted identifiers derived from
-- postgres.Config.Table; Store.Schema returns the result. Every statement is
-- idempotent.

-- The events: every stream's, in one table. position is drawn at insert
-- (unique, from the identity sequence; no index of its own is needed);
-- transaction_id is the appending transaction's 64-bit ID. Readers of the
-- global log order by (transaction_id, position) and read only transactions
-- below their snapshot's xmin (the fence), so late commits are never skipped.
CREATE TABLE IF NOT EXISTS {events} (
    position        bigint      NOT NULL GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME {seq}),
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_id        text        NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    -- The encoded payload; ciphertext when encrypted.
    data            bytea,
    -- A JSON object of strings, or NULL.
    metadata        jsonb,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    -- Encrypted with the stream's key (or erased by shredding).
    encrypted       boolean     NOT NULL DEFAULT false,
    -- A stream's events, and what decides between concurrent appenders:
    -- an append inserts its first event at the version after the one it
    -- expects. A stream's last event may close it: a tombstone, or the
    -- marker of archiving or shredding.
    CONSTRAINT {events_pkey} PRIMARY KEY (stream_id, version),
    CONSTRAINT {event_id} UNIQUE (event_id)
);

-- The global log's order.
CREATE INDEX IF NOT EXISTS {log_index} ON {events} (transaction_id, position);

-- The latest snapshot of each stream.
CREATE TABLE IF NOT EXISTS {snapshots} (
    stream_id      text        NOT NULL,
    version        bigint      NOT NULL,
    event_id       text        NOT NULL,
    schema_version integer     NOT NULL,
    data           bytea,
    encrypted      boolean     NOT NULL DEFAULT false,
    taken_at       timestamptz NOT NULL,
    CONSTRAINT {snapshots_pkey} PRIMARY KEY (stream_id)
);

-- Per-stream data keys, wrapped with the store's key-encryption key. A NULL
-- key is a shredded stream.
CREATE TABLE IF NOT EXISTS {keys} (
    stream_id   text        NOT NULL,
    key         bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    shredded_at timestamptz,
    CONSTRAINT {keys_pkey} PRIMARY KEY (stream_id)
);

-- Events of archived streams, out of the global log.
CREATE TABLE IF NOT EXISTS {archive} (
    position        bigint      NOT NULL,
    transaction_id  xid8        NOT NULL,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL,
    event_id        text        NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    data            bytea,
    metadata        jsonb,
    occurred_at     timestamptz NOT NULL,
    encrypted       boolean     NOT NULL,
    CONSTRAINT {archive_pkey} PRIMARY KEY (stream_id, version),
    CONSTRAINT {archive_id} UNIQUE (event_id)
);
