//! An issuer's public keys: read from a JWKS file or URL, cached by `kid`, refreshed on a
//! schedule and (rate-limited) when a token names a key we do not hold. A failed refresh keeps
//! the last good set: an issuer's outage must not lock every caller out while keys still verify.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, RwLock};

use super::IssuerConfig;
use crate::config::ConfigError;

#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub max_bytes: usize,
    pub max_keys: usize,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub timeout: Duration,
    /// The configured allow-list; a key gets the subset its type (and its `alg`, if any) allows.
    pub algorithms: Vec<Algorithm>,
}

/// One verification key and the algorithms it may verify.
pub(super) struct Key {
    pub decoding: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("algorithms", &self.algorithms).finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Url { url: String, http: reqwest::Client },
}

#[derive(Debug, Default)]
struct Cached {
    keys: HashMap<String, Arc<Key>>,
    loaded_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct IssuerKeys {
    issuer: String,
    source: Source,
    limits: Limits,
    cached: RwLock<Cached>,
    /// One refresh at a time; the others wait for its result instead of fetching again.
    refreshing: Mutex<()>,
}

/// `jwks_url` must be HTTPS, or plain HTTP to a loopback address (local runs only).
pub(super) fn check_url(url: &str, has_ca: bool) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if !has_ca && parsed.host().is_some_and(is_loopback) => Ok(()),
        "http" => Err("must be https (plain http is allowed to a loopback address only, without ca_path)".to_owned()),
        other => Err(format!("has scheme `{other}`; must be https")),
    }
}

fn is_loopback(host: url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => name == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

impl IssuerKeys {
    pub fn new(config: &IssuerConfig, limits: Limits, key: &str) -> Result<Self, ConfigError> {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Source::File(path.clone()),
            (None, Some(url)) => {
                let mut builder = reqwest::Client::builder()
                    .timeout(limits.timeout)
                    .connect_timeout(limits.timeout)
                    // A key set that redirects elsewhere is not the issuer's.
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("quilla-platform/", env!("CARGO_PKG_VERSION")));
                if let Some(ca) = &config.ca_path {
                    let pem = std::fs::read(ca).map_err(|e| {
                        ConfigError::new(format!("{key}.ca_path"), format!("cannot read {}: {e}", ca.display()))
                    })?;
                    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                        .ok()
                        .filter(|c| !c.is_empty())
                        .ok_or_else(|| ConfigError::new(format!("{key}.ca_path"), "holds no PEM certificate"))?;
                    builder = builder.tls_certs_only(certificates).https_only(true);
                }
                let http = builder.build().map_err(|e| ConfigError::new(format!("{key}.jwks_url"), e.to_string()))?;
                Source::Url { url: url.clone(), http }
            }
            (None, None) => return Err(ConfigError::new(format!("{key}.jwks_file"), "set jwks_file or jwks_url")),
        };
        let mut cached = Cached::default();
        if let Source::File(path) = &source {
            // A file is there when the pod starts (the kubelet mounts it first): a bad one is a
            // deployment error, refused at start-up rather than at the first request.
            let text = std::fs::read(path).map_err(|e| {
                ConfigError::new(format!("{key}.jwks_file"), format!("cannot read {}: {e}", path.display()))
            })?;
            cached.keys = parse(&limits, &text)
                .map_err(|e| ConfigError::new(format!("{key}.jwks_file"), format!("{}: {e}", path.display())))?;
            cached.loaded_at = Some(Instant::now());
            cached.attempted_at = cached.loaded_at;
        }
        Ok(Self {
            issuer: config.issuer.clone(),
            source,
            limits,
            cached: RwLock::new(cached),
            refreshing: Mutex::new(()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// True until a key set has been read once.
    pub fn never_loaded(&self) -> bool {
        self.cached.try_read().map(|c| c.loaded_at.is_none()).unwrap_or(false)
    }

    /// The key named `kid`, refreshing first when the set is older than `refresh`, or when `kid`
    /// is unknown and `refresh_unknown` (at most once per `min_refresh`).
    pub async fn key(&self, kid: &str, refresh_unknown: bool) -> Option<Arc<Key>> {
        {
            let cached = self.cached.read().await;
            let fresh = cached.loaded_at.is_some_and(|at| at.elapsed() < self.limits.refresh);
            let attempted_recently = cached.attempted_at.is_some_and(|at| at.elapsed() < self.limits.min_refresh);
            let found = cached.keys.get(kid).cloned();
            match found {
                Some(key) if fresh || attempted_recently => return Some(key),
                None if !refresh_unknown && (fresh || attempted_recently) => return None,
                None if attempted_recently => return None,
                _ => {}
            }
        }
        self.refresh().await;
        self.cached.read().await.keys.get(kid).cloned()
    }

    async fn refresh(&self) {
        let _one = self.refreshing.lock().await;
        // Someone else may have refreshed while this waited.
        if self.cached.read().await.attempted_at.is_some_and(|at| at.elapsed() < self.limits.min_refresh) {
            return;
        }
        let result = self.fetch().await;
        let mut cached = self.cached.write().await;
        cached.attempted_at = Some(Instant::now());
        match result {
            Ok(keys) => {
                tracing::debug!(issuer = %self.issuer, keys = keys.len(), "issuer keys read");
                cached.keys = keys;
                cached.loaded_at = Some(Instant::now());
                metrics::counter!("auth_jwks_refreshes_total", "outcome" => "ok").increment(1);
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "cannot refresh the issuer's keys; keeping the last good set");
                metrics::counter!("auth_jwks_refreshes_total", "outcome" => "failed").increment(1);
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let body = match &self.source {
            Source::File(path) => {
                let size = tokio::fs::metadata(path).await.map_err(|e| format!("{}: {e}", path.display()))?.len();
                if size > self.limits.max_bytes as u64 {
                    return Err(format!("{} is larger than {} bytes", path.display(), self.limits.max_bytes));
                }
                tokio::fs::read(path).await.map_err(|e| format!("{}: {e}", path.display()))?
            }
            Source::Url { url, http } => {
                let mut response = http.get(url).send().await.map_err(|e| crate::error_chain(&e))?;
                if !response.status().is_success() {
                    return Err(format!("{url} answered {}", response.status()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| crate::error_chain(&e))? {
                    if body.len() + chunk.len() > self.limits.max_bytes {
                        return Err(format!("{url} sent more than {} bytes", self.limits.max_bytes));
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        parse(&self.limits, &body)
    }
}

/// The signing keys of a JWKS document this service can use. Keys for encryption, without a
/// `kid`, or of a type no allowed algorithm verifies are skipped.
fn parse(limits: &Limits, body: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    if body.len() > limits.max_bytes {
        return Err(format!("the key set is larger than {} bytes", limits.max_bytes));
    }
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.len() > limits.max_keys {
        return Err(format!("{} keys, more than the {} allowed", set.keys.len(), limits.max_keys));
    }
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                jsonwebtoken::jwk::EllipticCurve::P256 => &[Algorithm::ES256],
                jsonwebtoken::jwk::EllipticCurve::P384 => &[Algorithm::ES384],
                _ => &[],
            },
            AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
            // A symmetric key in a public key set is never trusted.
            AlgorithmParameters::OctetKey(_) => &[],
        };
        // A key declared for an algorithm we cannot verify with (HMAC, encryption) is skipped.
        let declared = match jwk.common.key_algorithm {
            None => None,
            Some(declared) => match algorithm_of(declared) {
                Some(algorithm) => Some(algorithm),
                None => continue,
            },
        };
        let algorithms: Vec<Algorithm> = limits
            .algorithms
            .iter()
            .copied()
            .filter(|a| family.contains(a) && declared.is_none_or(|d| d == *a))
            .collect();
        if algorithms.is_empty() {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(jwk) else { continue };
        keys.insert(kid, Arc::new(Key { decoding, algorithms }));
    }
    Ok(keys)
}

fn algorithm_of(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        // Declared for another algorithm (HMAC, encryption): matches none we accept.
        _ => return None,
    })
}
