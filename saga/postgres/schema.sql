-- Saga tables of github.com/steadfast-go/steadfast/saga/postgres.
-- The placeholders in braces are replaced with quoted identifiers derived from
-- postgres.Config.Table; Schema returns the result. Every statement is
-- idempotent.

-- One row per saga instance: its state, its timers and its data.
CREATE TABLE IF NOT EXISTS {t} (
    id             text        PRIMARY KEY,
    type           text        NOT NULL,
    version        integer     NOT NULL,
    status         text        NOT NULL
                   CONSTRAINT {status_check} CHECK (status IN
                       ('running', 'compensating', 'completed', 'compensated', 'parked', 'aborted')),
    -- Index of the current step, and its name for readers without the
    -- definition.
    step           integer     NOT NULL,
    step_name      text        NOT NULL DEFAULT '',
    attempt        integer     NOT NULL DEFAULT 0,
    -- The command whose reply is awaited ('' when none).
    awaiting       text        NOT NULL DEFAULT '',
    awaiting_since timestamptz,
    -- The step timer: '' | 'timeout' | 'retry', due at timer_at.
    timer          text        NOT NULL DEFAULT '',
    timer_at       timestamptz,
    deadline       timestamptz,
    -- When an engine must next look at the instance: the earliest of
    -- timer_at, deadline and a pending request. Engines claim due rows
    -- with FOR UPDATE SKIP LOCKED.
    wake_at        timestamptz,
    past_pivot     boolean     NOT NULL DEFAULT false,
    parked_from    text        NOT NULL DEFAULT '',
    -- A pending operator request: '' | 'cancel' | 'retry' | 'skip'.
    request        text        NOT NULL DEFAULT '',
    request_reason text        NOT NULL DEFAULT '',
    failure        text        NOT NULL DEFAULT '',
    data           json        NOT NULL,
    trace          text        NOT NULL DEFAULT '',
    -- Sequence number of the last history event.
    seq            bigint      NOT NULL,
    -- Optimistic concurrency: every transition writes revision + 1 where
    -- the revision is still the one it loaded.
    revision       bigint      NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    ended_at       timestamptz
);

-- Due timers.
CREATE INDEX IF NOT EXISTS {wake_index} ON {t} (wake_at) WHERE wake_at IS NOT NULL;

-- Unfinished instances by definition version and status: the version check
-- at start-up, the gauges, operators' listings.
CREATE INDEX IF NOT EXISTS {open_index} ON {t} (type, version, status)
    WHERE status IN ('running', 'compensating', 'parked');

-- Retention of finished instances.
CREATE INDEX IF NOT EXISTS {ended_index} ON {t} (ended_at) WHERE ended_at IS NOT NULL;

-- Every instance's history, in order.
CREATE TABLE IF NOT EXISTS {h} (
    instance_id text        NOT NULL,
    seq         bigint      NOT NULL,
    at          timestamptz NOT NULL,
    kind        text        NOT NULL,
    step        text        NOT NULL DEFAULT '',
    attempt     integer     NOT NULL DEFAULT 0,
    -- The command sent or the reply received.
    message_id  text,
    detail      text        NOT NULL DEFAULT '',
    duration_us bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, seq)
);

-- One message is recorded once per instance: a redelivered reply is found
-- here, in the transaction that would apply it again.
CREATE UNIQUE INDEX IF NOT EXISTS {message_index} ON {h} (instance_id, message_id)
    WHERE message_id IS NOT NULL;
