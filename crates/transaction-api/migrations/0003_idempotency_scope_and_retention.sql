-- Idempotency keys belong to the caller that sent them and expire; delivered outbox events are
-- kept for a retention period, then deleted (docs/adr/0002, "Retention").

-- A key is unique per principal (the authenticated caller), not across every client: two callers
-- that happen to pick the same key get a transaction each, and neither sees the other's. Rows
-- written before this migration belong to no principal (''). `expires_at` is set by the service
-- from `transactions.idempotency_ttl` on every claim; the default only dates the existing rows,
-- which all expire one day after this migration (now() is evaluated once, here).
ALTER TABLE idempotency_keys
    ADD COLUMN principal text NOT NULL DEFAULT '',
    ADD COLUMN expires_at timestamptz NOT NULL DEFAULT now() + interval '24 hours';

-- The primary key is what makes a concurrent duplicate wait for the first writer and then see
-- its row (0001); it now covers the principal too. Dropped and added in this one transaction, so
-- no moment exists without it.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (principal, key);

-- The retention job finds expired keys, and delivered events past the retention age, through
-- these rather than by scanning the tables. Pending and dead events are in outbox_due and
-- outbox_dead (0001), which the gauges count from.
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE status = 'delivered';
