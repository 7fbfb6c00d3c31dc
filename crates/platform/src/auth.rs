//! Bearer-token authentication every API mounts: JWTs from a configured list of trusted issuers,
//! verified against their published keys (JWKS), turned into a typed [`Principal`].
//!
//! The design (docs/adr/0010): the algorithm comes from the allow-list in config, never from the
//! token (`alg: none` and every HMAC algorithm are refused, so a public key can never be used as
//! an HMAC secret); `iss`, `aud`, `exp` and `sub` are required, `nbf` checked when present, both
//! with a small leeway; keys are looked up by `kid`, cached, re-read periodically and on an
//! unknown `kid` no more often than `auth.jwks_min_refresh`, so a flood of made-up `kid`s cannot
//! turn into a flood of key fetches. Cryptography is `jsonwebtoken`'s (ring underneath).
//!
//! Handlers take a [`Principal`] argument; its extractor answers 401 (RFC 6750 `WWW-Authenticate`
//! and problem+json) before the handler runs. Authorisation stays with the handler, which knows
//! whose data a request touches: [`Principal::acts_for`] and [`Principal::require_scope`].

mod jwks;

pub mod dev;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::problem::Problem;

/// `[auth]`: which tokens this service accepts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A token's `aud` must contain this (the service's own name by default).
    pub audience: String,
    /// Signature algorithms accepted; a token's `alg` header must be one of them and match its
    /// key's type. Asymmetric only: HS256/384/512 are refused at load.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Longer `Authorization` headers are refused before any parsing.
    pub max_token_bytes: usize,
    /// Keys are re-read at least this often (a key the issuer withdrew stops working).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A token naming an unknown `kid` triggers a re-read at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// A key set larger than this (bytes or keys) is refused, keeping the last good one.
    pub jwks_max_bytes: usize,
    pub jwks_max_keys: usize,
    /// Bound on fetching a `jwks_url`.
    #[serde(with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// The issuers trusted; at least one (set per environment).
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer and where its public keys are published.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` its tokens carry.
    pub issuer: String,
    /// A JWKS document on disk (a mounted Secret or ConfigMap; re-read like a URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document over HTTPS (plain HTTP only to a loopback address, for local runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Trust only this CA bundle for `jwks_url` (an in-cluster issuer); the system roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_path: Option<PathBuf>,
}

impl AuthConfig {
    /// Checks the section; `section` is its dotted name (`auth`).
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        if self.audience.trim().is_empty() {
            return Err(ConfigError::new(key("audience"), "must not be empty"));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::new(key("algorithms"), "must list at least one algorithm"));
        }
        if let Some(hmac) =
            self.algorithms.iter().find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(ConfigError::new(
                key("algorithms"),
                format!(
                    "{hmac:?} is symmetric: an issuer's published key would be enough to forge tokens; use RS256, PS256, ES256 or EdDSA"
                ),
            ));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(ConfigError::new(key("leeway"), "must be at most 5m: it extends every token's lifetime"));
        }
        for (name, value) in [
            ("max_token_bytes", self.max_token_bytes),
            ("jwks_max_bytes", self.jwks_max_bytes),
            ("jwks_max_keys", self.jwks_max_keys),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key(name), "must be at least 1"));
            }
        }
        for (name, value) in [
            ("jwks_refresh", self.jwks_refresh),
            ("jwks_min_refresh", self.jwks_min_refresh),
            ("jwks_timeout", self.jwks_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key(name), "must be greater than zero"));
            }
        }
        if self.jwks_min_refresh > self.jwks_refresh {
            return Err(ConfigError::new(key("jwks_min_refresh"), "must not be longer than jwks_refresh"));
        }
        if self.issuers.is_empty() {
            return Err(ConfigError::new(
                key("issuers"),
                "must list at least one trusted issuer ([[auth.issuers]] with issuer and jwks_file or jwks_url)",
            ));
        }
        for (i, issuer) in self.issuers.iter().enumerate() {
            let at = |name: &str| format!("{section}.issuers[{i}].{name}");
            if issuer.issuer.trim().is_empty() {
                return Err(ConfigError::new(at("issuer"), "must not be empty"));
            }
            if self.issuers[..i].iter().any(|other| other.issuer == issuer.issuer) {
                return Err(ConfigError::new(at("issuer"), "is listed twice"));
            }
            match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(_), None) if issuer.ca_path.is_some() => {
                    return Err(ConfigError::new(at("ca_path"), "applies to jwks_url only"));
                }
                (Some(_), None) => {}
                (None, Some(url)) => {
                    jwks::check_url(url, issuer.ca_path.is_some()).map_err(|e| ConfigError::new(at("jwks_url"), e))?
                }
                _ => return Err(ConfigError::new(at("jwks_file"), "set exactly one of jwks_file and jwks_url")),
            }
        }
        Ok(())
    }
}

/// What a caller may be. Unknown roles in a token are ignored (they grant nothing here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// An end user: acts for its own subject only.
    Customer,
    /// Another workload (or an operator's tool): acts for any user.
    Service,
}

impl Role {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "customer" => Some(Self::Customer),
            "service" => Some(Self::Service),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Service => "service",
        }
    }
}

/// An authenticated caller, from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub issuer: String,
    /// `sub`: for a customer, the user id it acts for.
    pub subject: String,
    pub roles: BTreeSet<Role>,
    /// From the space-separated `scope` claim (RFC 8693 / RFC 9068).
    pub scopes: BTreeSet<String>,
}

impl Principal {
    /// Whether this caller may act on `user_id`'s data: a service for anyone, a customer for itself.
    pub fn acts_for(&self, user_id: &str) -> bool {
        self.roles.contains(&Role::Service) || (self.roles.contains(&Role::Customer) && self.subject == user_id)
    }

    /// 403 unless the token was granted `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), AuthError> {
        if self.scopes.contains(scope) { Ok(()) } else { Err(AuthError::InsufficientScope(scope.to_owned())) }
    }

    /// 403 unless this caller acts for `user_id` (see [`Principal::acts_for`]).
    pub fn require_acts_for(&self, user_id: &str) -> Result<(), AuthError> {
        if self.acts_for(user_id) { Ok(()) } else { Err(AuthError::NotYours) }
    }

    /// A stable key for data scoped to this caller (e.g. idempotency keys): issuer and subject,
    /// which no two callers share.
    pub fn scope_key(&self) -> String {
        format!("{} {}", self.issuer, self.subject)
    }
}

/// Why a request was refused. 401s carry no more detail than RFC 6750 allows a client to act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs a bearer token (Authorization: Bearer <token>)")]
    Missing,
    #[error("{0}")]
    Invalid(&'static str),
    #[error("the token lacks the `{0}` scope")]
    InsufficientScope(String),
    #[error("this token may not act for that user")]
    NotYours,
    /// No issuer's keys could be read: the fault is ours, not the token's.
    #[error("the token issuers' keys cannot be read right now")]
    KeysUnavailable,
}

impl AuthError {
    /// The bounded `reason` label of `auth_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::NotYours => "forbidden",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

/// Verifies bearer tokens against the configured issuers. One per service, shared by handlers.
#[derive(Debug)]
pub struct Authenticator {
    realm: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    max_token_bytes: usize,
    issuers: Vec<jwks::IssuerKeys>,
}

impl Authenticator {
    /// Builds the verifier; `jwks_file` issuers are read now, so a missing or broken file fails
    /// start-up naming its key; `jwks_url` issuers are fetched on first use.
    pub fn new(realm: &str, config: &AuthConfig) -> Result<Arc<Self>, ConfigError> {
        config.validate("auth")?;
        let limits = jwks::Limits {
            max_bytes: config.jwks_max_bytes,
            max_keys: config.jwks_max_keys,
            refresh: config.jwks_refresh,
            min_refresh: config.jwks_min_refresh,
            timeout: config.jwks_timeout,
            algorithms: config.algorithms.clone(),
        };
        let issuers = config
            .issuers
            .iter()
            .enumerate()
            .map(|(i, issuer)| jwks::IssuerKeys::new(issuer, limits.clone(), &format!("auth.issuers[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        // Every series exists from the start at 0, so rates and alerts see the first refusal.
        for reason in ["missing", "invalid", "insufficient_scope", "forbidden", "keys_unavailable"] {
            metrics::counter!("auth_failures_total", "reason" => reason).increment(0);
        }
        for outcome in ["ok", "failed"] {
            metrics::counter!("auth_jwks_refreshes_total", "outcome" => outcome).increment(0);
        }
        Ok(Arc::new(Self {
            realm: realm.to_owned(),
            audience: config.audience.clone(),
            algorithms: config.algorithms.clone(),
            leeway: config.leeway,
            max_token_bytes: config.max_token_bytes,
            issuers,
        }))
    }

    /// Authenticates a request from its `Authorization` header.
    pub async fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<Principal, AuthError> {
        let Some(value) = authorization else { return Err(AuthError::Missing) };
        if value.len() > self.max_token_bytes {
            return Err(AuthError::Invalid("the token is too large"));
        }
        let value = value.to_str().map_err(|_| AuthError::Invalid("the Authorization header is not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => token.trim(),
            _ => return Err(AuthError::Invalid("the Authorization header must be `Bearer <token>`")),
        };
        self.verify(token).await
    }

    /// Verifies one compact JWS and returns who it names.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::Invalid("the token is too large"));
        }
        // Only the header is read before the signature is checked: for `alg` and `kid`.
        let header = decode_header(token)
            .map_err(|_| AuthError::Invalid("the token is malformed or its algorithm is not supported"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid("the token's algorithm is not accepted"));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(AuthError::Invalid("the token names no signing key (kid)"));
        };
        let mut candidates = self.keys_for(kid, false).await;
        if candidates.is_empty() {
            candidates = self.keys_for(kid, true).await;
        }
        if candidates.is_empty() {
            if self.issuers.iter().all(jwks::IssuerKeys::never_loaded) {
                return Err(AuthError::KeysUnavailable);
            }
            return Err(AuthError::Invalid("the token is signed with an unknown key"));
        }
        let mut error = AuthError::Invalid("the token's signature does not match its key");
        for (issuer, key) in candidates {
            if !key.algorithms.contains(&header.alg) {
                error = AuthError::Invalid("the token's algorithm does not match its key");
                continue;
            }
            let mut validation = Validation::new(header.alg);
            validation.algorithms = vec![header.alg];
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[&self.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = self.leeway.as_secs();
            validation.validate_nbf = true;
            match decode::<Claims>(token, &key.decoding, &validation) {
                Ok(data) => return data.claims.into_principal(),
                Err(e) => error = AuthError::Invalid(describe(e.kind())),
            }
        }
        Err(error)
    }

    async fn keys_for(&self, kid: &str, refresh_unknown: bool) -> Vec<(String, Arc<jwks::Key>)> {
        let mut found = Vec::new();
        for issuer in &self.issuers {
            if let Some(key) = issuer.key(kid, refresh_unknown).await {
                found.push((issuer.issuer().to_owned(), key));
            }
        }
        found
    }

    /// The response for a refused request, naming this service as the realm.
    pub fn refusal(&self, error: &AuthError) -> Response {
        refusal(error, Some(&self.realm))
    }
}

/// 401 or 403 problem+json with RFC 6750's `WWW-Authenticate` challenge (503 if no issuer's keys
/// could ever be read: then the fault is ours).
fn refusal(error: &AuthError, realm: Option<&str>) -> Response {
    metrics::counter!("auth_failures_total", "reason" => error.reason()).increment(1);
    let realm = realm.map(|r| format!("realm=\"{r}\", ")).unwrap_or_default();
    let (problem, challenge) = match error {
        AuthError::Missing => {
            (Problem::unauthorized(error.to_string()), Some(format!("Bearer {}", realm.trim_end_matches([',', ' ']))))
        }
        AuthError::Invalid(why) => (
            Problem::unauthorized(error.to_string()),
            Some(format!("Bearer {realm}error=\"invalid_token\", error_description=\"{why}\"")),
        ),
        AuthError::InsufficientScope(scope) => (
            Problem::forbidden(error.to_string()),
            Some(format!("Bearer {realm}error=\"insufficient_scope\", scope=\"{scope}\"")),
        ),
        AuthError::NotYours => (Problem::forbidden(error.to_string()), None),
        AuthError::KeysUnavailable => (
            Problem::service_unavailable(error.to_string())
                .with_cause_text("no trusted issuer's keys could be read; refusing every token"),
            None,
        ),
    };
    let mut response = problem.into_response();
    if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(c.trim_end()).ok()) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidAudience => "the token is not meant for this service (aud)",
        ErrorKind::InvalidIssuer => "the token's issuer does not own its signing key (iss)",
        ErrorKind::InvalidSignature => "the token's signature does not match its key",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss, aud, sub)",
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key",
        _ => "the token is malformed",
    }
}

/// The claims read from a verified token (the registered ones are checked by `Validation`).
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scope: String,
}

impl Claims {
    fn into_principal(self) -> Result<Principal, AuthError> {
        if self.sub.is_empty() || self.sub.len() > 128 || self.sub.chars().any(char::is_control) {
            return Err(AuthError::Invalid("the token's subject must be 1 to 128 printable characters"));
        }
        if self.roles.len() > 32 || self.scope.len() > 2048 {
            return Err(AuthError::Invalid("the token carries too many roles or scopes"));
        }
        Ok(Principal {
            issuer: self.iss,
            subject: self.sub,
            roles: self.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            scopes: self.scope.split_ascii_whitespace().map(str::to_owned).collect(),
        })
    }
}

/// For refusals a handler decides (403s): the challenge then names no realm.
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        refusal(&self, None)
    }
}

/// The rejection of the [`Principal`] extractor: already a complete response.
#[derive(Debug)]
pub struct Refused(Response);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        self.0
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<Authenticator>: FromRef<S>,
{
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let authenticator = Arc::<Authenticator>::from_ref(state);
        let principal = authenticator
            .authenticate(parts.headers.get(header::AUTHORIZATION))
            .await
            .map_err(|error| Refused(authenticator.refusal(&error)))?;
        Ok(principal)
    }
}

/// Declares the `bearer` security scheme (a JWT) that operations name in `security(...)`.
#[derive(Debug)]
pub struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}
