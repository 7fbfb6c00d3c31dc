//! RFC 9457 `application/problem+json` errors: the only error shape any service returns.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON Pointer (RFC 6901) to the offending member, e.g. `/amount`; `/` for the whole body.
    pub pointer: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(field: &str, detail: impl Into<String>) -> Self {
        let pointer = if field.is_empty() { "/".to_owned() } else { format!("/{}", field.replace('.', "/")) };
        Self { pointer, detail: detail.into() }
    }
}

/// An RFC 9457 problem details object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI identifying the problem type.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Per-field validation errors (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Problem-type specific members (RFC 9457 section 3.2).
    #[serde(flatten, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds to wait before retrying (429 and 503).
    #[serde(skip)]
    pub retry_after_seconds: Option<u32>,
    /// What went wrong inside (an error and its causes), for the log alone: never serialised,
    /// never sent. The server logs it once per response, at error level for a 5xx, so the code
    /// that answers with a problem never logs it itself.
    #[serde(skip)]
    pub cause: Option<String>,
}

/// A problem's internal cause, carried in its response's extensions from the handler to the
/// server's logging middleware (which removes it: it never leaves the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalCause(pub String);

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Self {
            problem_type: format!("https://quilla.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after_seconds: None,
            cause: None,
        }
    }

    /// Records `error`, with its whole chain of causes, as the internal cause to log.
    pub fn with_cause(self, error: &(dyn std::error::Error + 'static)) -> Self {
        self.with_cause_text(crate::error_chain(error))
    }

    /// Records an internal cause that is not an error value (e.g. a panic's message).
    pub fn with_cause_text(mut self, cause: impl Into<String>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a problem-specific member.
    pub fn with_extension(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed-request", "Malformed request").with_detail(detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").with_detail(detail)
    }

    /// 403: authenticated, but not allowed to do this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Resource not found").with_detail(detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed")
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict").with_detail(detail)
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large")
            .with_detail(format!("the body must not exceed {limit_bytes} bytes"))
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            .with_detail("the body must be JSON, sent with `Content-Type: application/json`")
    }

    /// 422 with one entry per invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation-error", "Request validation failed");
        problem.detail = Some(match errors.len() {
            1 => "1 field is invalid".to_owned(),
            n => format!("{n} fields are invalid"),
        });
        problem.errors = errors;
        problem
    }

    /// 422 without a single field to blame (e.g. an idempotency key reused with another body).
    pub fn unprocessable(slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title).with_detail(detail)
    }

    pub fn too_many_requests(retry_after_seconds: u32) -> Self {
        let mut problem = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests");
        problem.retry_after_seconds = Some(retry_after_seconds);
        problem
    }

    pub fn service_unavailable(detail: impl Into<String>) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service-unavailable", "Service unavailable")
            .with_detail(detail);
        problem.retry_after_seconds = Some(1);
        problem
    }

    /// 504 for a non-idempotent request (no Idempotency-Key) that failed at a point where its
    /// work may already be committed: no Retry-After, because repeating it blindly could do the
    /// work twice (docs/adr/0011).
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "outcome-unknown", "Outcome unknown").with_detail(format!(
            "{}; it may or may not have taken effect. Do not repeat it blindly: look the result up, or send \
             requests with an Idempotency-Key, whose repeats are safe",
            detail.into()
        ))
    }

    /// 500 with nothing about the cause: the client gets the request id; give the cause to log
    /// with [`Self::with_cause`], or use [`Self::internal_caused_by`].
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal-error", "Internal server error")
            .with_detail("the error was logged; quote the x-request-id header when reporting it")
    }

    /// A bare 500 whose logged cause is `error` with its chain.
    pub fn internal_caused_by(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::internal().with_cause(error)
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry_after = self.retry_after_seconds;
        let cause = self.cause.clone();
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(cause) = cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

/// Fallback for unknown routes (counted under the `unmatched` route label).
pub async fn not_found_fallback() -> Problem {
    Problem::not_found("no route matches this path")
}

/// Fallback for known routes called with the wrong method.
pub async fn method_not_allowed_fallback() -> Problem {
    Problem::method_not_allowed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot store the row")]
    struct Outer(#[source] std::io::Error);

    #[tokio::test]
    async fn the_cause_rides_in_the_response_extensions_and_never_in_the_body() {
        let error = Outer(std::io::Error::other("connection reset"));
        let response = Problem::internal_caused_by(&error).into_response();
        assert_eq!(
            response.extensions().get::<InternalCause>(),
            Some(&InternalCause("cannot store the row: connection reset".to_owned())),
            "the whole chain, for the log"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(!text.contains("connection reset") && !text.contains("cannot store"), "{text}");
    }

    #[test]
    fn a_problem_without_a_cause_carries_none() {
        assert!(Problem::not_found("no such thing").into_response().extensions().get::<InternalCause>().is_none());
    }
}
