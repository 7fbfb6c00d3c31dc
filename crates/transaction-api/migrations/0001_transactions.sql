-- transaction-api owns the `transactions` schema; the pool's search_path points here.

CREATE TABLE transactions (
    id          text PRIMARY KEY,
    user_id     text NOT NULL,
    amount      numeric(24, 4) NOT NULL CHECK (amount > 0),
    currency    char(3) NOT NULL,
    status      text NOT NULL CHECK (status IN ('completed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX transactions_user_id ON transactions (user_id, id DESC);

-- One row per Idempotency-Key. The request fingerprint tells a replay (same body) from a
-- conflicting reuse (different body). The primary key makes concurrent duplicates wait for the
-- first writer's commit and then see its row, so only one transaction is ever created.
CREATE TABLE idempotency_keys (
    key             text PRIMARY KEY,
    fingerprint     bytea NOT NULL,
    transaction_id  text NOT NULL REFERENCES transactions (id) DEFERRABLE INITIALLY DEFERRED,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: written in the same database transaction as the row it announces,
-- delivered later by the dispatcher. Rows are never deleted by the service: delivered rows are
-- the audit trail, dead rows are dead letters waiting for an operator.
CREATE TABLE outbox (
    event_id         text PRIMARY KEY,
    event_type       text NOT NULL,
    transaction_id   text NOT NULL REFERENCES transactions (id),
    -- The exact bytes sent (and signed) on every attempt.
    payload          text NOT NULL,
    -- Trace context of the request that created the event, so delivery joins its trace.
    traceparent      text,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);

CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (created_at) WHERE status = 'dead';

-- What operators query first when webhooks stop arriving.
CREATE VIEW dead_letters AS
    SELECT event_id, event_type, transaction_id, attempts, last_error, created_at
    FROM outbox
    WHERE status = 'dead';
