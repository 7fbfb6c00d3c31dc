//! The one error type of transaction-api handlers and its mapping to problem+json.

use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::{FieldError, Problem};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    #[error("transaction {0} not found")]
    NotFound(String),
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this idempotency key is in progress")]
    IdempotencyKeyInProgress,
    /// The database failed mid-create, after the statement may have committed, for a request
    /// without an Idempotency-Key: the client must not be told to simply retry.
    #[error("the outcome of the create is unknown")]
    OutcomeUnknown(#[source] sqlx::Error),
    /// Authenticated, but not allowed (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::IdempotencyKeyReused => Self::IdempotencyKeyReused,
            StoreError::IdempotencyKeyInProgress => Self::IdempotencyKeyInProgress,
            StoreError::Database(e) => Self::Database(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match &self {
            Self::Validation(errors) => Problem::validation(errors.clone()),
            Self::NotFound(id) => Problem::not_found(format!("no transaction with id `{id}`")),
            Self::IdempotencyKeyReused => Problem::unprocessable(
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was already used with a different request body; use a new key",
            ),
            Self::IdempotencyKeyInProgress => {
                let mut problem = Problem::conflict(
                    "a request with this Idempotency-Key is still being processed; retry with the same key shortly",
                );
                problem.retry_after_seconds = Some(1);
                problem
            }
            Self::Database(error) => platform::db::error_problem(error),
            Self::Auth(error) => return error.clone().into_response(),
            Self::OutcomeUnknown(error) => {
                tracing::error!(error = %platform::error_chain(error), "create failed mid-commit; outcome unknown");
                Problem::outcome_unknown("the database connection failed while the transaction was being stored")
            }
        };
        problem.into_response()
    }
}
