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
    #[error("the timestamp is outside the accepted window")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// The `webhook-signature` header value for one event.
pub fn sign(key: &[u8], event_id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, event_id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Checks the signature (constant time) and that `timestamp` is within `tolerance_seconds` of `now`.
pub fn verify(
    key: &[u8],
    event_id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    if event_id.is_empty() || event_id.len() > 256 {
        return Err(SignatureError::MalformedHeader(ID_HEADER));
    }
    let timestamp: i64 = timestamp.trim().parse().map_err(|_| SignatureError::MalformedHeader(TIMESTAMP_HEADER))?;
    if (now - timestamp).abs() > tolerance_seconds {
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
    let expected = mac(key, event_id, timestamp, body);
    if candidates.iter().any(|candidate| expected.clone().verify_slice(candidate).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
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
            prop_assert_eq!(verify(&key, &id, &(NOW + skew).to_string(), &signature, &body, NOW, 300), Ok(()));
        }

        #[test]
        fn any_tampering_fails(key in prop::collection::vec(any::<u8>(), 1..64), body in prop::collection::vec(any::<u8>(), 1..512), flip in any::<prop::sample::Index>()) {
            let signature = sign(&key, "evt_1", NOW, &body);
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
            prop_assert_eq!(verify(&key, "evt_1", &NOW.to_string(), &signature, &tampered, NOW, 300), Err(SignatureError::Mismatch));
            prop_assert_eq!(verify(&key, "evt_2", &NOW.to_string(), &signature, &body, NOW, 300), Err(SignatureError::Mismatch));
            let mut other_key = key.clone();
            other_key.push(1);
            prop_assert_eq!(verify(&other_key, "evt_1", &NOW.to_string(), &signature, &body, NOW, 300), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn stale_and_malformed_are_rejected() {
        let signature = sign(b"k", "evt_1", NOW - 301, b"{}");
        assert_eq!(
            verify(b"k", "evt_1", &(NOW - 301).to_string(), &signature, b"{}", NOW, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"k", "evt_1", "yesterday", &signature, b"{}", NOW, 300),
            Err(SignatureError::MalformedHeader(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify(b"k", "evt_1", &NOW.to_string(), "v2,abc", b"{}", NOW, 300),
            Err(SignatureError::MalformedHeader(SIGNATURE_HEADER))
        );
    }

    #[test]
    fn any_of_several_signatures_may_match_for_key_rotation() {
        let good = sign(b"new", "evt_1", NOW, b"{}");
        let old = sign(b"old", "evt_1", NOW, b"{}");
        let header = format!("{old} {good}");
        assert_eq!(verify(b"new", "evt_1", &NOW.to_string(), &header, b"{}", NOW, 300), Ok(()));
    }
}
