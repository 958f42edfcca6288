-- Flow tracker tables of github.com/steadfast-go/steadfast/saga/postgres:
-- one row per choreographed flow (correlation ID) and one per event. The
-- placeholders in braces are replaced with quoted identifiers derived from
-- postgres.FlowsConfig.Table. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS {t} (
    correlation_id text        PRIMARY KEY,
    flow           text        NOT NULL,
    started_at     timestamptz NOT NULL,
    last_at        timestamptz NOT NULL,
    last_type      text        NOT NULL,
    last_source    text        NOT NULL DEFAULT '',
    events         integer     NOT NULL,
    done           boolean     NOT NULL DEFAULT false,
    ended_at       timestamptz,
    deadline_us    bigint      NOT NULL DEFAULT 0,
    -- started_at + the flow's deadline; NULL when it has none.
    due_at         timestamptz
);

-- Stuck flows: unfinished ones by due time.
CREATE INDEX IF NOT EXISTS {due_index} ON {t} (due_at) WHERE NOT done AND due_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {e} (
    message_id     text        PRIMARY KEY,
    correlation_id text        NOT NULL,
    seq            bigint      GENERATED ALWAYS AS IDENTITY,
    causation_id   text        NOT NULL DEFAULT '',
    flow           text        NOT NULL,
    type           text        NOT NULL,
    source         text        NOT NULL DEFAULT '',
    topic          text        NOT NULL DEFAULT '',
    at             timestamptz NOT NULL,
    terminal       boolean     NOT NULL DEFAULT false,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- A flow's timeline.
CREATE INDEX IF NOT EXISTS {flow_index} ON {e} (correlation_id, at, seq);
