//! HTTP handlers: create and read transactions.

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRef;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::auth::{Authenticator, Principal};
use platform::cache::Cache;
use platform::extract::{ApiJson, ApiPath};
use platform::{FieldError, Problem};
use rust_decimal::Decimal;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::money::{Currencies, Money, MoneyError, parse_amount};
use crate::outbox;
use crate::store::{self, Created, Idempotency, NewTransaction, Transaction};

/// Header carrying the client's idempotency key.
pub use platform::server::IDEMPOTENCY_KEY;

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub max_amount: Decimal,
    /// The accepted currencies (ISO 4217 without fund and special codes, plus configured extras).
    pub currencies: Currencies,
    pub cache_ttl: std::time::Duration,
    pub idempotency_wait: std::time::Duration,
    pub idempotency_ttl: std::time::Duration,
    pub wake_dispatcher: Arc<Notify>,
    pub auth: Arc<Authenticator>,
}

impl FromRef<AppState> for Arc<Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// Scope needed to create transactions.
pub const WRITE_SCOPE: &str = "transactions:write";
/// Scope needed to read them.
pub const READ_SCOPE: &str = "transactions:read";

/// `POST /transactions` body. The amount is a JSON number or a string holding a decimal; it is
/// read from the exact text, never through a float.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    #[schema(example = "u1")]
    pub user_id: String,
    /// A JSON number, or a string holding one in JSON number syntax (`100.50`, `"100.50"`,
    /// `1.5e1`). It is taken exactly as written or refused with 422, never rounded: at most 24
    /// digits, and the value must be exact with the currency's ISO 4217 minor units (`100.500`
    /// BRL is 100.50; `100.505` BRL and `1.234e0` BRL are refused). No `+`, `_`, spaces, leading
    /// zeros, NaN or Infinity.
    #[schema(value_type = String, example = "100.50")]
    pub amount: serde_json::Value,
    #[schema(example = "BRL")]
    pub currency: String,
}

impl CreateTransaction {
    /// Checks every field and reports all problems at once.
    fn validate(&self, max_amount: Decimal, currencies: &Currencies) -> Result<NewTransaction, Vec<FieldError>> {
        let mut errors = Vec::new();
        let user_id = self.user_id.trim();
        if user_id.is_empty() || user_id.len() > 128 || user_id.chars().any(char::is_control) {
            errors.push(FieldError::new("user_id", "must be 1 to 128 printable characters"));
        }
        let currency =
            currencies.parse(&self.currency).map_err(|e| errors.push(FieldError::new("currency", e.to_string())));
        // With serde_json's `arbitrary_precision` a number's text is exactly what the client sent.
        let amount_text = match &self.amount {
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::String(s) => Some(s.clone()),
            _ => None,
        };
        let amount = amount_text
            .ok_or(MoneyError::NotADecimal)
            .and_then(|t| parse_amount(&t))
            .map_err(|e| errors.push(FieldError::new("amount", e.to_string())));
        let money = match (amount, currency) {
            (Ok(amount), Ok(currency)) => Money::new(amount, currency, max_amount)
                .map_err(|e| errors.push(FieldError::new("amount", e.to_string())))
                .ok(),
            (Ok(amount), Err(())) => {
                // Precision needs the currency; sign and size do not, so report them too.
                if let Err(e) = amount.check_range(max_amount) {
                    errors.push(FieldError::new("amount", e.to_string()));
                }
                None
            }
            _ => None,
        };
        match money {
            Some(money) if errors.is_empty() => Ok(NewTransaction { user_id: user_id.to_owned(), money }),
            _ => Err(errors),
        }
    }
}

fn cache_key(id: &str) -> String {
    format!("txn:{id}")
}

/// Create a transaction.
#[utoipa::path(
    post,
    path = "/transactions",
    request_body = CreateTransaction,
    security(("bearer" = ["transactions:write"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Recommended: makes retries safe. Scoped to the caller and kept for transactions.idempotency_ttl (24 h): a repeat with the same key and body returns the original (201, Idempotent-Replayed: true); with another body it is 422. Echoed in the response.")),
    responses(
        (status = 201, description = "Created (or replayed)", body = Transaction, headers(("Location" = String), ("Idempotency-Key" = String, description = "The key sent, if any"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks transactions:write, or is a customer's acting for another user", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with the same Idempotency-Key is still in progress", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or reused idempotency key", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or timed out with an Idempotency-Key: retrying with the same key is safe", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "Timed out or lost the database mid-commit without an Idempotency-Key: the outcome is unknown, do not retry blindly", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "transactions"
)]
pub async fn create_transaction(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateTransaction>,
) -> Result<Response, ApiError> {
    principal.require_scope(WRITE_SCOPE)?;
    let idempotency_key = idempotency_key(&headers)?;
    let new = body.validate(state.max_amount, &state.currencies).map_err(ApiError::Validation)?;
    principal.require_acts_for(&new.user_id)?;
    let id = platform::ids::new_id("txn");
    let traceparent = platform::trace_context::current().map(|c| c.to_string());
    let idempotency = idempotency_key.as_deref().map(|key| Idempotency {
        key,
        wait: state.idempotency_wait,
        ttl: state.idempotency_ttl,
    });
    // Keys are the caller's own: another caller's identical key is another request.
    let owner = principal.scope_key();
    let created =
        store::create(&state.pool, &owner, &id, &new, idempotency, |t| outbox::transaction_created(t, traceparent))
            .await
            .map_err(|error| match error {
                // Lost mid-statement, the insert may have committed. With a key a retry replays
                // it, so 503 (retry) stays honest; without one, say the outcome is unknown.
                ApiError::Database(e) if idempotency_key.is_none() && outcome_unknown(&e) => {
                    ApiError::OutcomeUnknown(e)
                }
                other => other,
            })?;
    let (transaction, replayed) = match created {
        Created::New(t) => {
            state.wake_dispatcher.notify_one();
            metrics::counter!("transactions_created_total", "currency" => t.currency.clone()).increment(1);
            if let Ok(major) = t.amount.parse::<f64>() {
                // Metrics are approximate by nature; the stored amount stays exact.
                metrics::histogram!("transaction_amount", "currency" => t.currency.clone()).record(major);
            }
            state.cache.set(&cache_key(&t.id), &t, state.cache_ttl).await;
            (t, false)
        }
        Created::Replayed(t) => (t, true),
    };
    let mut response = (StatusCode::CREATED, Json(&transaction)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/transactions/{}", transaction.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    // Echoed, so a client (or a log) can pair the answer with the key it sent.
    if let Some(key) = idempotency_key.as_deref().and_then(|k| HeaderValue::from_str(k).ok()) {
        response.headers_mut().insert(IDEMPOTENCY_KEY, key);
    }
    Ok(response)
}

/// Errors after which an insert may or may not have committed: the connection broke while the
/// statement was in flight. Pool timeouts and SQLSTATE errors mean it did not.
fn outcome_unknown(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match value.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(ApiError::Validation(vec![FieldError::new(
            "",
            "the Idempotency-Key header must be 1 to 255 printable ASCII characters",
        )])),
    }
}

/// Fetch a transaction by id (served from the Redis cache when possible).
#[utoipa::path(
    get,
    path = "/transactions/{id}",
    params(("id" = String, Path, description = "Transaction id (txn_...)")),
    security(("bearer" = ["transactions:read"])),
    responses(
        (status = 200, description = "The transaction", body = Transaction),
        (status = 401, description = "No valid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks transactions:read", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown id, or another user's transaction (for a customer token)", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "transactions"
)]
pub async fn get_transaction(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Transaction>, ApiError> {
    principal.require_scope(READ_SCOPE)?;
    if !platform::ids::is_valid_id("txn", &id) {
        return Err(ApiError::NotFound(id));
    }
    let pool = &state.pool;
    let found = state.cache.get_or_load(&cache_key(&id), state.cache_ttl, || store::find(pool, &id)).await?;
    // Another user's transaction is as absent as one that never existed: a customer learns
    // nothing about ids it does not own.
    found.filter(|t| principal.acts_for(&t.user_id)).map(Json).ok_or(ApiError::NotFound(id))
}
