//! PostgreSQL access for notifications.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// A stored notification as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    #[schema(example = "notif_01jc3v6p6m9x2s8q4r7t5w1y0z")]
    pub id: String,
    #[schema(example = "u1")]
    pub user_id: String,
    #[schema(example = "Transaction txn_01jc3v6p6m9x2s8q4r7t5w1y0z of 100.50 BRL completed")]
    pub message: String,
    pub created_at: DateTime<Utc>,
}

/// Outcome of recording a webhook event.
#[derive(Debug)]
pub enum Recorded {
    New(Notification),
    /// The event was seen before: the notification it produced then.
    Duplicate(Notification),
}

const COLUMNS: &str = "id, user_id, message, created_at";

/// Stores a notification created through the API.
pub async fn insert(pool: &PgPool, user_id: &str, message: &str) -> Result<Notification, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notifications (id, user_id, message) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    )))
    .bind(platform::ids::new_id("notif"))
    .bind(user_id)
    .bind(message)
    .fetch_one(pool)
    .await
}

/// Stores the notification for a webhook event once, however often the event is delivered.
///
/// A concurrent duplicate waits on the unique `source_event_id` until the first insert commits,
/// then inserts nothing and reads the winner's row.
pub async fn record_event(
    pool: &PgPool,
    event_id: &str,
    user_id: &str,
    message: &str,
) -> Result<Recorded, sqlx::Error> {
    let inserted: Option<Notification> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notifications (id, user_id, message, source_event_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (source_event_id) DO NOTHING
         RETURNING {COLUMNS}"
    )))
    .bind(platform::ids::new_id("notif"))
    .bind(user_id)
    .bind(message)
    .bind(event_id)
    .fetch_optional(pool)
    .await?;
    if let Some(notification) = inserted {
        return Ok(Recorded::New(notification));
    }
    let existing =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM notifications WHERE source_event_id = $1")))
            .bind(event_id)
            .fetch_one(pool)
            .await?;
    Ok(Recorded::Duplicate(existing))
}

/// One page of a user's notifications, newest first (by the id's millisecond; ids of one millisecond
/// in random but stable order), strictly older than `before` when given.
/// Fetches one row more than `limit` so the caller knows whether another page exists.
pub async fn page(
    pool: &PgPool,
    user_id: &str,
    before: Option<&str>,
    limit: u32,
) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications
         WHERE user_id = $1 AND ($2::text IS NULL OR id < $2)
         ORDER BY id DESC
         LIMIT $3"
    )))
    .bind(user_id)
    .bind(before)
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await
}
