//! Signed webhooks (Standard Webhooks scheme): HMAC-SHA256 over `id.timestamp.body`.
//!
//! Headers: `webhook-id` (event id, the dedup key), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,<base64>`; several space-separated signatures allow key rotation).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing or malformed")]
    MalformedHeader(&'static str),
    #[error("the webhook timestamp is too old or in the future")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The shortest key accepted: 256 bits of HMAC-SHA256 key material as text.
pub const MIN_KEY_LENGTH: usize = 32;

/// Checks a signing key setting named `key`: set (when `required`), and at least
/// [`MIN_KEY_LENGTH`] characters once resolved (a `file://`/`aws-sm://` reference is checked
/// again after it is read). Both services validate the shared key with this one function.
pub fn validate_key(key: &str, secret: &crate::Secret, required: bool) -> Result<(), crate::config::ConfigError> {
    let value = secret.expose();
    if value.is_empty() {
        return if required {
            Err(crate::config::ConfigError::new(key, "is required: the key transaction-api signs webhooks with"))
        } else {
            Ok(())
        };
    }
    if !secret.is_reference() && value.len() < MIN_KEY_LENGTH {
        return Err(crate::config::ConfigError::new(key, format!("must be at least {MIN_KEY_LENGTH} characters")));
    }
    Ok(())
}

/// The `webhook-signature` header value for one event.
pub fn sign(key: &[u8], event_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, event_id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Checks the signature (constant time) against each of `keys` (the current key and, during a
/// rotation, the previous one) and that `timestamp` is within `tolerance_seconds` of `now`.
pub fn verify(
    keys: &[&[u8]],
    event_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: u64,
) -> Result<(), SignatureError> {
    if event_id.is_empty() || event_id.len() > 256 {
        return Err(SignatureError::MalformedHeader(ID_HEADER));
    }
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| SignatureError::MalformedHeader(TIMESTAMP_HEADER))?;
    // abs_diff: `now - timestamp` overflows for a timestamp near i64::MIN or i64::MAX.
    if now.abs_diff(timestamp) > tolerance_seconds {
        return Err(SignatureError::Stale);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split_ascii_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::MalformedHeader(SIGNATURE_HEADER));
    }
    let matches = |key: &&[u8]| {
        let expected = mac(key, event_id, timestamp, body);
        candidates.iter().any(|candidate| expected.clone().verify_slice(candidate).is_ok())
    };
    if keys.iter().any(matches) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

fn mac(key: &[u8], event_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(event_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    proptest! {
        #[test]
        fn signed_events_verify(key in prop::collection::vec(any::<u8>(), 1..64), id in "[a-z_0-9]{1,40}", body in prop::collection::vec(any::<u8>(), 0..512), skew in -300i64..=300) {
            let signature = sign(&key, &id, NOW + skew, &body);
            prop_assert_eq!(verify(&[&key], &id, &(NOW + skew).to_string(), &signature, &body, NOW, 300), Ok(()));
        }

        #[test]
        fn any_tampering_fails(key in prop::collection::vec(any::<u8>(), 1..64), body in prop::collection::vec(any::<u8>(), 1..512), flip in any::<prop::sample::Index>()) {
            let signature = sign(&key, "evt_1", NOW, &body);
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
            prop_assert_eq!(verify(&[&key], "evt_1", &NOW.to_string(), &signature, &tampered, NOW, 300), Err(SignatureError::Mismatch));
            prop_assert_eq!(verify(&[&key], "evt_2", &NOW.to_string(), &signature, &body, NOW, 300), Err(SignatureError::Mismatch));
            let mut other_key = key.clone();
            other_key.push(1);
            prop_assert_eq!(verify(&[&other_key], "evt_1", &NOW.to_string(), &signature, &body, NOW, 300), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn stale_and_malformed_are_rejected() {
        let signature = sign(b"k", "evt_1", NOW - 301, b"{}");
        assert_eq!(
            verify(&[b"k"], "evt_1", &(NOW - 301).to_string(), &signature, b"{}", NOW, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(&[b"k"], "evt_1", "yesterday", &signature, b"{}", NOW, 300),
            Err(SignatureError::MalformedHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify(&[b"k"], "evt_1", &NOW.to_string(), "v2,abc", b"{}", NOW, 300),
            Err(SignatureError::MalformedHeader(SIGNATURE_HEADER))
        );
    }

    #[test]
    fn any_of_several_signatures_may_match_for_key_rotation() {
        let good = sign(b"new", "evt_1", NOW, b"{}");
        let old = sign(b"old", "evt_1", NOW, b"{}");
        let header = format!("{old} {good}");
        assert_eq!(verify(&[b"new"], "evt_1", &NOW.to_string(), &header, b"{}", NOW, 300), Ok(()));
    }

    #[test]
    fn the_previous_key_still_verifies_during_a_rotation_and_only_then() {
        let signed_with_old = sign(b"old", "evt_1", NOW, b"{}");
        let keys: [&[u8]; 2] = [b"new", b"old"];
        assert_eq!(verify(&keys, "evt_1", &NOW.to_string(), &signed_with_old, b"{}", NOW, 300), Ok(()));
        assert_eq!(
            verify(&[b"new"], "evt_1", &NOW.to_string(), &signed_with_old, b"{}", NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    proptest! {
        /// Any timestamp, however far from now (i64::MIN and i64::MAX included), is judged without
        /// overflow: inside the window it verifies, outside it is stale.
        #[test]
        fn extreme_timestamps_are_stale_not_a_panic(timestamp in any::<i64>(), now in any::<i64>()) {
            let signature = sign(b"k", "evt_1", timestamp, b"{}");
            let result = verify(&[b"k"], "evt_1", &timestamp.to_string(), &signature, b"{}", now, 300);
            if now.abs_diff(timestamp) <= 300 {
                prop_assert_eq!(result, Ok(()));
            } else {
                prop_assert_eq!(result, Err(SignatureError::Stale));
            }
        }
    }
}
