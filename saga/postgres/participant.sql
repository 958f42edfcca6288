-- Participant records of github.com/steadfast-go/steadfast/saga/postgres:
-- what a participant did for each step of each saga instance. The
-- placeholders in braces are replaced with quoted identifiers derived from
-- postgres.ParticipantsConfig.Table. Every statement is idempotent.

CREATE TABLE IF NOT EXISTS {t} (
    participant text        NOT NULL,
    saga_id     text        NOT NULL,
    step        text        NOT NULL,
    state       text        NOT NULL
                CONSTRAINT {state_check} CHECK (state IN ('done', 'refused', 'compensated')),
    -- The command whose action ran or refused.
    command     text        NOT NULL DEFAULT '',
    -- The success reply's payload, sent again for duplicates.
    payload     bytea,
    reason      text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (participant, saga_id, step)
);

-- Retention.
CREATE INDEX IF NOT EXISTS {updated_index} ON {t} (updated_at);
