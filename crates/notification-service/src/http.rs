//! HTTP handlers: notifications by API, by signed webhook, and listed per user.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use platform::auth::{Authenticator, Principal};
use platform::events::{Event, EventData, TransactionCreated};
use platform::extract::{ApiJson, ApiPath, ApiQuery, RawJson, parse_json};
use platform::webhook_signature::{self, ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use platform::{FieldError, Problem, Secret};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::config::PaginationConfig;
use crate::error::ApiError;
use crate::store::{self, Notification, Recorded};

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub signing_key: Secret,
    /// Accepted beside `signing_key` during a rotation; empty otherwise.
    pub previous_signing_key: Secret,
    pub tolerance: Duration,
    pub pagination: PaginationConfig,
    pub auth: std::sync::Arc<Authenticator>,
}

impl FromRef<AppState> for std::sync::Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// Scope needed to create notifications through the API.
pub const WRITE_SCOPE: &str = "notifications:write";
/// Scope needed to list them.
pub const READ_SCOPE: &str = "notifications:read";

/// `POST /notify` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyRequest {
    #[schema(example = "u1")]
    pub user_id: String,
    #[schema(example = "Your card was charged 100.50 BRL")]
    pub message: String,
}

/// A page of notifications.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    /// Pass as `cursor` to get the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Query parameters of `GET /notifications/{user_id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size (default and maximum from config: 20 and 100).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn check_user_id(user_id: &str, errors: &mut Vec<FieldError>, field: &str) {
    if user_id.trim().is_empty() || user_id.len() > 128 || user_id.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must be 1 to 128 printable characters"));
    }
}

fn created(notification: &Notification, status: StatusCode) -> Response {
    let mut response = (status, Json(notification)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/notifications/{}", notification.user_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Send a notification to a user.
#[utoipa::path(
    post,
    path = "/notify",
    request_body = NotifyRequest,
    security(("bearer" = ["notifications:write"])),
    responses(
        (status = 201, description = "Stored", body = Notification),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks notifications:write, or is a customer's acting for another user", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "notifications"
)]
pub async fn notify(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<NotifyRequest>,
) -> Result<Response, ApiError> {
    principal.require_scope(WRITE_SCOPE)?;
    let mut errors = Vec::new();
    check_user_id(&body.user_id, &mut errors, "user_id");
    if body.message.trim().is_empty() || body.message.chars().count() > 2000 {
        errors.push(FieldError::new("message", "must be 1 to 2000 characters, not only spaces"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    principal.require_acts_for(&body.user_id)?;
    let notification = store::insert(&state.pool, &body.user_id, &body.message).await?;
    metrics::counter!("notifications_created_total", "source" => "api").increment(1);
    Ok(created(&notification, StatusCode::CREATED))
}

/// Receive a signed `transaction.created` event from transaction-api (Standard Webhooks).
#[utoipa::path(
    post,
    path = "/webhooks/transactions",
    params(
        ("webhook-id" = String, Header, description = "Event id; redeliveries repeat it"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds when signed"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of id.timestamp.body>`"),
    ),
    responses(
        (status = 201, description = "Notification created", body = Notification),
        (status = 200, description = "Event already received: the notification it created", body = Notification),
        (status = 401, description = "Missing, stale or wrong signature", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a valid event", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "webhooks"
)]
pub async fn receive_transaction_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawJson(body): RawJson,
) -> Result<Response, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let event_id = header(ID_HEADER);
    let now = Utc::now().timestamp();
    let mut keys = vec![state.signing_key.expose().as_bytes()];
    if !state.previous_signing_key.expose().is_empty() {
        keys.push(state.previous_signing_key.expose().as_bytes());
    }
    webhook_signature::verify(
        &keys,
        event_id,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        now,
        state.tolerance.as_secs(),
    )
    .inspect_err(|error| {
        count_webhook("unauthenticated");
        tracing::warn!(event_id, %error, "webhook rejected");
    })?;
    // The only event type this service consumes today, as transaction-api sends it.
    let event: Event<TransactionCreated> = parse_json(&body).inspect_err(|_| count_webhook("invalid"))?;
    let mut errors = Vec::new();
    if event.id != event_id {
        errors.push(FieldError::new("id", "must equal the webhook-id header"));
    }
    if !event.has_type_of_its_data() {
        let expected = TransactionCreated::TYPE;
        errors.push(FieldError::new("type", format!("unsupported event type; expected `{expected}`")));
    }
    check_user_id(&event.data.user_id, &mut errors, "data.user_id");
    if !errors.is_empty() {
        count_webhook("invalid");
        return Err(ApiError::Validation(errors));
    }
    let data = &event.data;
    let message = format!("Transaction {} of {} {} {}", data.id, data.amount, data.currency, data.status);
    let recorded = store::record_event(&state.pool, &event.id, &data.user_id, &message).await?;
    Ok(match recorded {
        Recorded::New(notification) => {
            count_webhook("created");
            metrics::counter!("notifications_created_total", "source" => "webhook").increment(1);
            let lag = (Utc::now() - data.created_at).to_std().unwrap_or_default();
            metrics::histogram!("notification_delivery_lag_seconds").record(lag.as_secs_f64());
            created(&notification, StatusCode::CREATED)
        }
        Recorded::Duplicate(notification) => {
            count_webhook("duplicate");
            created(&notification, StatusCode::OK)
        }
    })
}

/// Counts one received webhook by outcome: `created`, `duplicate`, `unauthenticated` (missing, stale or
/// wrong signature: 401) or `invalid` (signed, but not a valid event: 400/422).
fn count_webhook(outcome: &'static str) {
    metrics::counter!("webhook_events_total", "outcome" => outcome).increment(1);
}

/// A user's notifications, newest first, with cursor pagination.
#[utoipa::path(
    get,
    path = "/notifications/{user_id}",
    params(("user_id" = String, Path, description = "The user"), ListQuery),
    security(("bearer" = ["notifications:read"])),
    responses(
        (status = 200, description = "One page (empty for unknown users)", body = NotificationPage),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks notifications:read, or is a customer's asking for another user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "notifications"
)]
pub async fn list_notifications(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<NotificationPage>, ApiError> {
    principal.require_scope(READ_SCOPE)?;
    principal.require_acts_for(&user_id)?;
    let limit = query.limit.unwrap_or(state.pagination.default_limit);
    let mut errors = Vec::new();
    if limit == 0 || limit > state.pagination.max_limit {
        errors.push(FieldError::new("limit", format!("must be between 1 and {}", state.pagination.max_limit)));
    }
    if query.cursor.as_deref().is_some_and(|cursor| !platform::ids::is_valid_id("notif", cursor)) {
        errors.push(FieldError::new("cursor", "is not a cursor returned by this endpoint"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut items = store::page(&state.pool, &user_id, query.cursor.as_deref(), limit).await?;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|n| n.id.clone())
    } else {
        None
    };
    Ok(Json(NotificationPage { items, next_cursor }))
}
