-- notification-service owns the `notifications` schema; the pool's search_path points here.

CREATE TABLE notifications (
    id               text PRIMARY KEY,
    user_id          text NOT NULL,
    message          text NOT NULL,
    -- The webhook event that produced this notification (NULL for POST /notify). Unique, so a
    -- redelivered event finds its notification instead of creating a second one.
    source_event_id  text UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Newest-first pages per user: ids are ULIDs, so id order is creation order.
CREATE INDEX notifications_user_id ON notifications (user_id, id DESC);
