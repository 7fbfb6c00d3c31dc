//! The one error type of transaction-api, handlers and store alike, and its mapping to problem+json.
//!
//! Internal causes ride in the problem ([`Problem::with_cause`]); the server logs them once.

use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::{FieldError, Problem};

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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            Self::Validation(errors) => Problem::validation(errors),
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
            Self::Database(error) => Problem::from(error),
            Self::Auth(error) => return error.into_response(),
            Self::OutcomeUnknown(error) => {
                Problem::outcome_unknown("the database connection failed while the transaction was being stored")
                    .with_cause(&error)
            }
        };
        problem.into_response()
    }
}

#[cfg(test)]
mod tests {
    use platform::problem::InternalCause;

    use super::*;

    fn cause(response: &Response) -> Option<&str> {
        response.extensions().get::<InternalCause>().map(|c| c.0.as_str())
    }

    #[test]
    fn client_errors_carry_no_cause_to_log() {
        for (error, status) in [
            (ApiError::NotFound("txn_1".to_owned()), 404),
            (ApiError::IdempotencyKeyReused, 422),
            (ApiError::IdempotencyKeyInProgress, 409),
            (ApiError::Validation(vec![FieldError::new("amount", "must be positive")]), 422),
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), status);
            assert_eq!(cause(&response), None, "{status}");
        }
    }

    #[test]
    fn database_errors_are_mapped_by_the_platform_with_their_cause() {
        let unavailable = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(unavailable.status(), 503);
        assert_eq!(unavailable.headers()["retry-after"], "2");
        assert!(cause(&unavailable).is_some_and(|c| c.contains("pool timed out")));
        let broken = ApiError::from(sqlx::Error::RowNotFound).into_response();
        assert_eq!(broken.status(), 500);
        assert!(cause(&broken).is_some_and(|c| c.contains("no rows returned")), "{:?}", cause(&broken));
    }

    #[test]
    fn an_unknown_outcome_is_a_504_without_retry_after_whose_cause_is_logged() {
        let error = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset-by-peer"));
        let response = ApiError::OutcomeUnknown(error).into_response();
        assert_eq!(response.status(), 504);
        assert!(!response.headers().contains_key("retry-after"));
        assert!(cause(&response).is_some_and(|c| c.contains("reset-by-peer")), "{:?}", cause(&response));
    }
}
