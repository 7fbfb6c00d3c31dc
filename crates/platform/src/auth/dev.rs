//! A throwaway token issuer for the local stack (`cargo xtask up`, `cargo xtask token`) and
//! tests: one ES256 key made on this machine, its JWKS, and tokens shaped like the real issuers'.
//! Never configured in a cluster: environments trust their region's issuer only.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `iss` of every dev token, and the audience list that lets one token call every service.
pub const DEV_ISSUER: &str = "https://dev-issuer.quilla.localhost";

/// Every scope the services check: dev tokens are granted all of them (their role still limits
/// whose data they reach).
pub const SCOPES: &[&str] = &["transactions:read", "transactions:write", "notifications:read", "notifications:write"];

/// The audiences of a dev token: one token calls every service.
pub const AUDIENCES: &[&str] = &["transaction-api", "notification-service"];

/// `auth.issuers` trusting `issuer` with keys in `jwks_file`, as one environment variable value
/// (`QUILLA_AUTH__ISSUERS`, figment's inline syntax).
pub fn issuers_env(issuer: &str, jwks_file: &std::path::Path) -> String {
    format!("[{{issuer=\"{issuer}\", jwks_file=\"{}\"}}]", jwks_file.display())
}

/// What a token says about its holder.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    pub subject: &'a str,
    pub roles: &'a [&'a str],
    pub scopes: &'a [&'a str],
    pub audience: &'a [&'a str],
    pub ttl: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a [&'a str],
    iat: u64,
    nbf: u64,
    exp: u64,
    roles: &'a [&'a str],
    scope: String,
}

/// One signing key and the issuer name it signs as.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("issuer", &self.issuer).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// A new P-256 key from the system's random source.
    pub fn generate(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap_or_else(|_| unreachable!("ring generates P-256 keys from the system RNG"));
        Self::from_pkcs8(issuer, pkcs8.as_ref()).unwrap_or_else(|e| unreachable!("a key ring made: {e}"))
    }

    /// The key saved by [`DevIssuer::pkcs8_der`].
    pub fn from_pkcs8(issuer: &str, pkcs8: &[u8]) -> Result<Self, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
            .map_err(|e| format!("not a PKCS#8 P-256 key: {e}"))?;
        let public = pair.public_key().as_ref().to_vec();
        let kid = format!("dev-{}", hex::encode(&Sha256::digest(&public)[..8]));
        Ok(Self { issuer: issuer.to_owned(), kid, pkcs8: pkcs8.to_vec(), public })
    }

    /// The private key, PKCS#8 DER, for saving between `xtask up` and `xtask token`.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS document (RFC 7517), as an issuer publishes it.
    pub fn jwks(&self) -> String {
        // ring's public key is the uncompressed point: 0x04, then x and y (32 bytes each).
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    }

    /// A signed token (ES256, with this key's `kid`).
    pub fn token(&self, request: &TokenRequest<'_>) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: &self.issuer,
            sub: request.subject,
            aud: request.audience,
            iat: now,
            nbf: now,
            exp: now + request.ttl.as_secs(),
            roles: request.roles,
            scope: request.scopes.join(" "),
        };
        self.sign(&claims)
    }

    /// Signs any claims with this key: tests use it to make tokens a real issuer never would.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .unwrap_or_else(|e| unreachable!("signing with a valid P-256 key: {e}"))
    }

    /// The raw public key bytes (what an attacker who read the JWKS holds).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }
}
