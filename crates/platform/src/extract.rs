//! Request extractors whose rejections are problem+json: JSON bodies, path parameters and query strings.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::header;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::{FieldError, Problem};

/// A JSON body: 415 unless the content type is JSON (or absent), 413 over the body limit, 400 if malformed,
/// 422 (with a pointer to the field) if it does not match the expected shape.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawJson(bytes) = RawJson::from_request(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The unparsed bytes of a JSON body (for signature checks before parsing), with the same
/// 415 and 413 rejections as [`ApiJson`].
#[derive(Debug, Clone)]
pub struct RawJson(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawJson {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !declares_json(request.headers()) {
            return Err(Problem::unsupported_media_type());
        }
        let limit = request.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| match rejection {
            BytesRejection::FailedToBufferBody(error) if is_length_limit(&error) => Problem::payload_too_large(limit),
            other => Problem::bad_request(other.body_text()),
        })?;
        Ok(RawJson(bytes))
    }
}

/// Path parameters, with axum's rejection (e.g. `%FF`, not UTF-8) as a 400 problem instead of
/// its plain-text body.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| Problem::bad_request(rejection.body_text()))
    }
}

/// Whether the `Content-Type` says JSON (`application/json`, `application/*+json`) or is absent.
/// Anything else is refused, form-encoded bodies included: a browser may send those to another
/// origin without a CORS preflight, so accepting them as JSON would let any web page post here.
fn declares_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return true };
    let essence = value.to_str().unwrap_or_default().split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether buffering failed because the body exceeded the configured limit.
fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Parses a JSON document, mapping syntax errors to 400 and shape errors to 422.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Problem::bad_request(format!("the body is not valid JSON: {inner}"))
        } else {
            let field = if path == "." { "" } else { path.as_str() };
            Problem::validation(vec![FieldError::new(field, strip_position(&inner.to_string()))])
        }
    })?;
    deserializer.end().map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 42"; the pointer already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// The configured body limit, stored in request extensions so rejections can quote it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A query string: 422 with the offending parameter when it does not parse.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded_deserializer(query);
        serde_path_to_error::deserialize(deserializer).map(ApiQuery).map_err(|error| {
            let path = error.path().to_string();
            let field = if path == "." { "" } else { path.as_str() };
            Problem::validation(vec![FieldError::new(field, error.into_inner().to_string())])
        })
    }
}

fn serde_urlencoded_deserializer(query: &str) -> serde_urlencoded::Deserializer<'_> {
    serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u32,
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_are_422_with_pointer() {
        assert_eq!(parse_json::<Body>(b"{not json").unwrap_err().status, 400);
        let wrong_type = parse_json::<Body>(br#"{"name":"a","count":"x"}"#).unwrap_err();
        assert_eq!(wrong_type.status, 422);
        assert_eq!(wrong_type.errors[0].pointer, "/count");
        let unknown = parse_json::<Body>(br#"{"name":"a","count":1,"extra":true}"#).unwrap_err();
        assert_eq!(unknown.status, 422);
        assert!(unknown.errors[0].detail.contains("unknown field `extra`"), "{:?}", unknown.errors);
        assert_eq!(parse_json::<Body>(br#"{"name":"a","count":1} trailing"#).unwrap_err().status, 400);
    }

    fn with_content_type(value: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header value"));
        }
        headers
    }

    #[test]
    fn only_json_content_types_or_none_are_json() {
        for (value, json) in [
            (None, true),
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some("application/merge-patch+json"), true),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("text/plain"), false),
            (Some("multipart/form-data; boundary=x"), false),
        ] {
            assert_eq!(declares_json(&with_content_type(value)), json, "{value:?}");
        }
    }
}
