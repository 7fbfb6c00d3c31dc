//! The JWT verifier against tokens a hostile or careless client would send, with keys from a JWKS
//! file and from a JWKS URL served over real HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use platform::auth::dev::{DEV_ISSUER, DevIssuer, TokenRequest};
use platform::auth::{AuthConfig, AuthError, Authenticator, Role};
use platform::config::ConfigError;
use platform::testkit::TempDir;
use serde_json::json;
use tokio::sync::RwLock;

const AUDIENCE: &str = "transaction-api";

fn config(issuers: &str) -> Result<AuthConfig, ConfigError> {
    let text = format!(
        r#"audience = "{AUDIENCE}"
algorithms = ["ES256", "RS256"]
leeway = "30s"
max_token_bytes = 8192
jwks_refresh = "10m"
jwks_min_refresh = "1s"
jwks_max_bytes = 65536
jwks_max_keys = 8
jwks_timeout = "2s"
{issuers}"#
    );
    let config: AuthConfig = toml::from_str(&text).map_err(|e| ConfigError::new("auth", e.to_string()))?;
    config.validate("auth")?;
    Ok(config)
}

fn customer(issuer: &DevIssuer, subject: &str) -> String {
    issuer.token(&TokenRequest {
        subject,
        roles: &["customer"],
        scopes: &["transactions:read", "transactions:write"],
        audience: &[AUDIENCE, "notification-service"],
        ttl: Duration::from_secs(300),
    })
}

struct FileIssuer {
    issuer: DevIssuer,
    _dir: TempDir,
    authenticator: Arc<Authenticator>,
}

fn file_issuer() -> FileIssuer {
    let issuer = DevIssuer::generate(DEV_ISSUER);
    let dir = TempDir::new("auth-jwks");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, issuer.jwks()).expect("write jwks");
    let config = config(&format!("[[issuers]]\nissuer = \"{DEV_ISSUER}\"\njwks_file = \"{}\"\n", path.display()))
        .expect("valid config");
    let authenticator = Authenticator::new("test", &config).expect("authenticator");
    FileIssuer { issuer, _dir: dir, authenticator }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
}

fn is_invalid(result: Result<platform::auth::Principal, AuthError>) -> bool {
    matches!(result, Err(AuthError::Invalid(_)))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[tokio::test]
async fn a_valid_token_names_its_subject_roles_and_scopes() {
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    let principal = authenticator.authenticate(Some(&bearer(&customer(&issuer, "u1")))).await.expect("valid");
    assert_eq!((principal.subject.as_str(), principal.issuer.as_str()), ("u1", DEV_ISSUER));
    assert_eq!(principal.roles.iter().copied().collect::<Vec<_>>(), [Role::Customer]);
    assert!(principal.scopes.contains("transactions:write"));
    assert!(principal.acts_for("u1") && !principal.acts_for("u2"));
    assert_eq!(
        principal.require_scope("notifications:write"),
        Err(AuthError::InsufficientScope("notifications:write".into()))
    );
}

#[tokio::test]
async fn no_header_or_another_scheme_is_refused() {
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    assert_eq!(authenticator.authenticate(None).await, Err(AuthError::Missing));
    let token = customer(&issuer, "u1");
    for header in [format!("Basic {token}"), token.clone(), "Bearer ".to_owned(), format!("Bearer {token}x")] {
        let value = HeaderValue::from_str(&header).expect("header");
        assert!(is_invalid(authenticator.authenticate(Some(&value)).await), "{header}");
    }
    let huge = "a".repeat(9000);
    assert!(is_invalid(authenticator.authenticate(Some(&bearer(&huge))).await));
}

/// Header and claims of a forged token, base64url-encoded as a JWS signing input.
fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

fn good_claims(subject: &str) -> serde_json::Value {
    json!({"iss": DEV_ISSUER, "sub": subject, "aud": AUDIENCE, "exp": now() + 300, "roles": ["service"]})
}

#[tokio::test]
async fn alg_none_is_refused() {
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    for alg in ["none", "None", "NONE"] {
        let input = signing_input(&json!({"alg": alg, "typ": "JWT", "kid": issuer.kid()}), &good_claims("u1"));
        for token in [format!("{input}."), format!("{input}.AAAA")] {
            assert!(is_invalid(authenticator.verify(&token).await), "{alg}: {token}");
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    use hmac::{Hmac, KeyInit, Mac};
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    // The classic key-confusion forgery: the published key used as an HMAC secret, in every
    // form an attacker could guess the verifier would read it in.
    let jwk = serde_json::from_str::<serde_json::Value>(&issuer.jwks()).expect("json")["keys"][0].to_string();
    for secret in [issuer.public_key().to_vec(), issuer.jwks().into_bytes(), jwk.into_bytes()] {
        for alg in ["HS256", "HS384", "HS512"] {
            let input = signing_input(&json!({"alg": alg, "typ": "JWT", "kid": issuer.kid()}), &good_claims("u1"));
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).expect("any key length");
            mac.update(input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
            assert!(is_invalid(authenticator.verify(&token).await), "{alg}");
        }
    }
}

#[tokio::test]
async fn wrong_audience_issuer_and_times_are_refused() {
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    // The same key signing: only the claims differ, so only the claim checks can refuse.
    assert!(authenticator.verify(&issuer.sign(&good_claims("u1"))).await.is_ok(), "the baseline must pass");
    let mut cases = Vec::new();
    let mut claims = good_claims("u1");
    claims["aud"] = json!("notification-service");
    cases.push(("another audience", claims));
    let mut claims = good_claims("u1");
    claims["iss"] = json!("https://evil.example");
    cases.push(("another issuer", claims));
    let mut claims = good_claims("u1");
    claims["exp"] = json!(now() - 120);
    cases.push(("expired beyond the leeway", claims));
    let mut claims = good_claims("u1");
    claims["nbf"] = json!(now() + 120);
    cases.push(("not valid yet", claims));
    for missing in ["exp", "iss", "aud", "sub"] {
        let mut claims = good_claims("u1");
        claims.as_object_mut().expect("object").remove(missing);
        cases.push((missing, claims));
    }
    let mut claims = good_claims("u1");
    claims["sub"] = json!("x".repeat(200));
    cases.push(("an oversized subject", claims));
    for (what, claims) in cases {
        assert!(is_invalid(authenticator.verify(&issuer.sign(&claims)).await), "{what}");
    }
    // Within the leeway, an expired token still passes (clock skew).
    let mut claims = good_claims("u1");
    claims["exp"] = json!(now() - 5);
    assert!(authenticator.verify(&issuer.sign(&claims)).await.is_ok());
}

#[tokio::test]
async fn another_key_with_the_same_kid_is_refused() {
    let FileIssuer { issuer, authenticator, .. } = file_issuer();
    let impostor = DevIssuer::generate(DEV_ISSUER);
    let token = impostor.sign(&good_claims("u1"));
    // Re-sign with the real kid in the header, so lookup finds the real key.
    let (_, rest) = token.split_once('.').expect("jws");
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": issuer.kid()}).to_string());
    assert!(is_invalid(authenticator.verify(&format!("{header}.{rest}")).await));
    assert!(is_invalid(authenticator.verify(&impostor.sign(&good_claims("u1"))).await), "unknown kid");
}

#[test]
fn config_refuses_symmetric_algorithms_and_untrusted_transports() {
    let issuer = "[[issuers]]\nissuer = \"https://a\"\njwks_url = \"https://a/jwks\"\n";
    assert!(config(issuer).is_ok());
    let hmac = config(issuer).map(|mut c| {
        c.algorithms.push(jsonwebtoken::Algorithm::HS256);
        c.validate("auth")
    });
    assert_eq!(hmac.expect("parsed").expect_err("HS256").key, "auth.algorithms");
    assert_eq!(config("").expect_err("no issuer").key, "auth.issuers");
    for (issuers, key) in [
        ("[[issuers]]\nissuer = \"https://a\"\njwks_url = \"http://auth.example/jwks\"\n", "auth.issuers[0].jwks_url"),
        ("[[issuers]]\nissuer = \"https://a\"\n", "auth.issuers[0].jwks_file"),
        (
            "[[issuers]]\nissuer = \"https://a\"\njwks_url = \"https://a/j\"\njwks_file = \"/j\"\n",
            "auth.issuers[0].jwks_file",
        ),
        (&format!("{issuer}{issuer}"), "auth.issuers[1].issuer"),
    ] {
        assert_eq!(config(issuers).expect_err(issuers).key, key, "{issuers}");
    }
    assert!(config("[[issuers]]\nissuer = \"https://a\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n").is_ok());
}

#[test]
fn a_missing_or_broken_jwks_file_fails_start_up_naming_the_key() {
    let dir = TempDir::new("auth-broken");
    let path = dir.path().join("jwks.json");
    let with_file =
        || config(&format!("[[issuers]]\nissuer = \"x\"\njwks_file = \"{}\"\n", path.display())).expect("config");
    let error = Authenticator::new("test", &with_file()).expect_err("no file");
    assert_eq!(error.key, "auth.issuers[0].jwks_file");
    std::fs::write(&path, "{\"keys\": 3}").expect("write");
    let error = Authenticator::new("test", &with_file()).expect_err("not a JWKS");
    assert_eq!(error.key, "auth.issuers[0].jwks_file");
}

/// A JWKS endpoint whose document a test can swap, counting the fetches.
struct JwksServer {
    document: Arc<RwLock<String>>,
    fetches: Arc<AtomicUsize>,
    url: String,
    _task: tokio::task::JoinHandle<()>,
}

async fn jwks_server(initial: String) -> JwksServer {
    let document = Arc::new(RwLock::new(initial));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (document.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks",
        get(move || {
            let (d, f) = (d.clone(), f.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                d.read().await.clone()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    JwksServer { document, fetches, url, _task: task }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_first_sight_and_unknown_kids_do_not_flood_the_issuer() {
    let old = DevIssuer::generate(DEV_ISSUER);
    let server = jwks_server(old.jwks()).await;
    let config =
        config(&format!("[[issuers]]\nissuer = \"{DEV_ISSUER}\"\njwks_url = \"{}\"\n", server.url)).expect("config");
    let authenticator = Authenticator::new("test", &config).expect("authenticator");
    assert_eq!(server.fetches.load(Ordering::SeqCst), 0, "fetched on first use, not at start");
    authenticator.verify(&customer(&old, "u1")).await.expect("first use fetches the keys");
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // A flood of tokens naming keys nobody published: at most one fetch per jwks_min_refresh.
    let strangers: Vec<_> = (0..50).map(|_| DevIssuer::generate(DEV_ISSUER)).collect();
    let tokens: Vec<String> = strangers.iter().map(|s| customer(s, "u1")).collect();
    let results = futures::future::join_all(tokens.iter().map(|t| authenticator.verify(t))).await;
    assert!(results.into_iter().all(is_invalid));
    let after_flood = server.fetches.load(Ordering::SeqCst);
    assert!(after_flood <= 2, "{after_flood} fetches for 50 unknown kids");

    // The issuer rotates: publishes the new key beside the old one, then signs with it.
    let new = DevIssuer::generate(DEV_ISSUER);
    let both = json!({"keys": [
        serde_json::from_str::<serde_json::Value>(&old.jwks()).expect("json")["keys"][0],
        serde_json::from_str::<serde_json::Value>(&new.jwks()).expect("json")["keys"][0],
    ]});
    *server.document.write().await = both.to_string();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    authenticator.verify(&customer(&new, "u1")).await.expect("the new kid triggers a refresh");
    authenticator.verify(&customer(&old, "u1")).await.expect("the old key still verifies");

    // A broken or oversized document keeps the last good set.
    *server.document.write().await = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(70_000));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(is_invalid(authenticator.verify(&customer(&DevIssuer::generate(DEV_ISSUER), "u1")).await));
    authenticator.verify(&customer(&new, "u1")).await.expect("kept after a failed refresh");
}

#[tokio::test]
async fn an_unreachable_issuer_is_our_fault_not_the_tokens() {
    let port = platform::testkit::free_port();
    let config =
        config(&format!("[[issuers]]\nissuer = \"{DEV_ISSUER}\"\njwks_url = \"http://127.0.0.1:{port}/jwks\"\n"))
            .expect("config");
    let authenticator = Authenticator::new("test", &config).expect("authenticator");
    let token = customer(&DevIssuer::generate(DEV_ISSUER), "u1");
    assert_eq!(authenticator.verify(&token).await, Err(AuthError::KeysUnavailable));
}
