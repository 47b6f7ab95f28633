//! What a write with an `Idempotency-Key` carries to the database: the key's row id, scoped to
//! the caller, and the request's fingerprint. The statements that honour it are the
//! repository's: the key and its answer are written with the write, atomically.

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::http::auth::Principal;
use crate::http::idempotency::IdempotencyKey;

/// A keyed write's claim on its key.
#[derive(Clone, Debug)]
pub struct KeyClaim {
    /// The digest of the caller and the key: the row's id (the table holds neither), and, of
    /// its next eight bytes, the advisory lock that marks the write as running (PostgreSQL).
    /// 128 bits, as a UUID: the smallest key PostgreSQL indexes natively.
    pub hash: Uuid,
    pub lock: i64,
    /// The digest of the request (128 bits): the same key with another request is refused.
    pub fingerprint: Uuid,
    /// How long the answer is kept.
    pub ttl_secs: i64,
}

/// The request a key names, as its fingerprint reads it: the operation, its target and its
/// validated inputs (so a retry that differs only in JSON whitespace or member order, or in a
/// name's surrounding spaces, is the same request).
#[derive(Serialize)]
pub enum KeyedWrite<'a> {
    Create {
        email: &'a str,
        name: &'a str,
    },
    Update {
        id: Uuid,
        if_match: Option<&'a [i64]>,
        email: Option<&'a str>,
        name: Option<&'a str>,
    },
}

impl KeyClaim {
    pub fn new(
        principal: &Principal,
        key: &IdempotencyKey,
        write: &KeyedWrite,
        ttl: Duration,
    ) -> Self {
        // A newline is in neither a principal's text nor a key (visible ASCII).
        let hash: [u8; 32] =
            Sha256::digest(format!("{}\n{}", principal.key(), key.as_str())).into();
        let request = serde_json::to_vec(write).expect("a write serializes");
        let fingerprint: [u8; 32] = Sha256::digest(request).into();
        Self {
            hash: Uuid::from_bytes(first(&hash)),
            lock: i64::from_be_bytes(first(&hash[16..])),
            fingerprint: Uuid::from_bytes(first(&fingerprint)),
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        }
    }
}

/// The first `N` bytes of a digest.
fn first<const N: usize>(digest: &[u8]) -> [u8; N] {
    digest[..N].try_into().expect("a digest is long enough")
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text.to_owned()).unwrap()
    }

    #[test]
    fn a_claim_is_scoped_to_its_caller_and_fingerprints_its_request() {
        let ttl = Duration::from_secs(60);
        let alice = Principal::Client(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))));
        let bob = Principal::Client(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))));

        let claim = |who, key_text, write| KeyClaim::new(who, &key(key_text), write, ttl);
        let create = KeyedWrite::Create {
            email: "a@example.com",
            name: "A",
        };
        let create_other = KeyedWrite::Create {
            email: "b@example.com",
            name: "A",
        };
        let first = claim(&alice, "k1", &create);
        let again = claim(&alice, "k1", &create);
        assert_eq!(
            (&first.hash, &first.fingerprint),
            (&again.hash, &again.fingerprint)
        );
        assert_ne!(first.hash, claim(&bob, "k1", &create).hash);
        assert_ne!(first.hash, claim(&alice, "k2", &create).hash);
        let reused = claim(&alice, "k1", &create_other);
        assert_eq!(first.hash, reused.hash);
        assert_ne!(first.fingerprint, reused.fingerprint);
        let update = |if_match| KeyedWrite::Update {
            id: Uuid::nil(),
            if_match,
            email: None,
            name: Some("A"),
        };
        let (blind, guarded) = (update(None), update(Some(&[1][..])));
        assert_ne!(
            claim(&alice, "k1", &blind).fingerprint,
            claim(&alice, "k1", &guarded).fingerprint
        );
        assert_eq!(first.ttl_secs, 60);
    }
}
