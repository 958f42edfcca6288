-- Event store tables of github.com/steadfast-go/steadfast/eventsource/postgres.
-- The placeholders in braces are replaced with quoted identifiers derived from
-- postgres.Config.Table; Store.Schema returns the result. Every statement is
-- idempotent.

-- The events: every stream's, in one table. position is drawn at insert;
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
    CONSTRAINT {events_pkey} PRIMARY KEY (position),
    CONSTRAINT {event_id} UNIQUE (event_id),
    CONSTRAINT {stream_version} UNIQUE (stream_id, version)
);

-- The global log's order.
CREATE INDEX IF NOT EXISTS {log_index} ON {events} (transaction_id, position);

-- One row per stream: its version (the expected-version check), the ID of
-- the last transaction that appended (appends must come in transaction
-- order), and its state: 0 open, 1 deleted, 2 archived, 3 shredded.
CREATE TABLE IF NOT EXISTS {streams} (
    stream_id  text     NOT NULL,
    version    bigint   NOT NULL,
    last_xid   xid8     NOT NULL,
    state      smallint NOT NULL DEFAULT 0,
    CONSTRAINT {streams_pkey} PRIMARY KEY (stream_id)
) WITH (fillfactor = 80);

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
