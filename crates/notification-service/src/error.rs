//! The one error type of notification-service handlers and its mapping to problem+json.
//!
//! Internal causes ride in the problem (`Problem::from(sqlx::Error)`); the server logs them once.

use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::webhook_signature::SignatureError;
use platform::{FieldError, Problem};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// A body the platform's JSON reader refused, already as its problem (400 or 422).
    #[error("unreadable body: {}", .0.title)]
    Body(Problem),
    /// A webhook whose signature does not verify (401, with the error's own message).
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// No token, or authenticated but not allowed (401, 403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Body(problem)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = match self {
            Self::Validation(errors) => Problem::validation(errors),
            Self::Body(problem) => problem,
            Self::Signature(error) => Problem::unauthorized(error.to_string()),
            Self::Auth(error) => return error.into_response(),
            Self::Database(error) => Problem::from(error),
        };
        problem.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signature_error_is_a_401_whose_detail_is_the_errors_own_message() {
        for error in [SignatureError::MalformedHeader("webhook-id"), SignatureError::Stale, SignatureError::Mismatch] {
            let message = error.to_string();
            let response = ApiError::from(error).into_response();
            assert_eq!(response.status(), 401);
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
            let problem: serde_json::Value = serde_json::from_slice(&body).expect("problem+json");
            assert_eq!(problem["detail"], message.as_str());
        }
    }

    #[test]
    fn an_unavailable_database_is_a_503_whose_cause_is_logged_by_the_server() {
        let response = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(response.status(), 503);
        let cause = response.extensions().get::<platform::problem::InternalCause>().expect("a cause to log");
        assert!(cause.0.contains("pool timed out"), "{cause:?}");
    }
}
