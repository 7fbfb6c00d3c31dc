-- Outbox leases (docs/adr/0002): a dispatcher claims due events by moving their next_attempt_at
-- a lease ahead and stamping them with its claim, commits, delivers with no transaction open,
-- and records each outcome only if its claim still holds. A dispatcher that dies mid-delivery
-- leaves the lease to expire; the event is then due again and another dispatcher claims it.
ALTER TABLE outbox ADD COLUMN claim text;
