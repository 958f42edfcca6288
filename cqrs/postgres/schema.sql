-- Projection tables of github.com/steadfast-go/steadfast/cqrs/postgres.
-- The placeholders in braces are replaced with quoted identifiers derived from
-- postgres.Config.Table; Store.Schema returns the result. Every statement is
-- idempotent. The read models themselves are the application's tables.

-- One row per projection version: its checkpoint (a position of the event
-- store's global log, transaction then sequence) and its health. The row is
-- updated in the transaction that applies each batch, with a check that the
-- stored checkpoint is the one the batch started from.
CREATE TABLE IF NOT EXISTS {checkpoints} (
    name           text        NOT NULL,
    version        integer     NOT NULL,
    transaction_id bigint      NOT NULL DEFAULT 0,
    sequence       bigint      NOT NULL DEFAULT 0,
    status         text        NOT NULL DEFAULT 'running',
    error          text        NOT NULL DEFAULT '',
    attempts       integer     NOT NULL DEFAULT 0,
    events         bigint      NOT NULL DEFAULT 0,
    skipped        bigint      NOT NULL DEFAULT 0,
    owner          text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {checkpoints_pkey} PRIMARY KEY (name, version)
);

-- One row per projection name: the serving version, and how far the name's
-- side effects are done (by any version), so a rebuild does not repeat them.
CREATE TABLE IF NOT EXISTS {names} (
    name               text    NOT NULL,
    active             integer NOT NULL DEFAULT 0,
    effects_transaction bigint NOT NULL DEFAULT 0,
    effects_sequence   bigint  NOT NULL DEFAULT 0,
    CONSTRAINT {names_pkey} PRIMARY KEY (name)
);

-- Events a projection version skipped (poison or undecodable), recorded in
-- the transaction that moved its checkpoint past them.
CREATE TABLE IF NOT EXISTS {skipped} (
    name           text        NOT NULL,
    version        integer     NOT NULL,
    transaction_id bigint      NOT NULL,
    sequence       bigint      NOT NULL,
    event_id       text        NOT NULL,
    stream_id      text        NOT NULL,
    stream_version bigint      NOT NULL,
    type           text        NOT NULL,
    error          text        NOT NULL,
    skipped_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {skipped_pkey} PRIMARY KEY (name, version, transaction_id, sequence, event_id)
);

-- Event IDs a projection version fed by a broker subscription
-- (cqrs.Consumer) applied, recorded in the transaction that applied them, so
-- a redelivery is never applied twice. Rows are kept until expires_at
-- (cqrs.ConsumerConfig.Keep) and then deleted by the store.
CREATE TABLE IF NOT EXISTS {applied} (
    name       text        NOT NULL,
    version    integer     NOT NULL,
    event_id   text        NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT {applied_pkey} PRIMARY KEY (name, version, event_id)
);
CREATE INDEX IF NOT EXISTS {applied_expires} ON {applied} (expires_at);
