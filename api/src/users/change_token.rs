//! The change feed's position token (`since` and `next` of `listUserChanges`): where in commit
//! order a consumer has read to.
//!
//! Wire form: base64url without padding of 24 bytes (the change position, big-endian i64, then
//! the user id that breaks ties), exactly 32 characters of `[A-Za-z0-9_-]`. Every string of
//! [`PATTERN`] decodes, so the spec's pattern is the whole contract.

use base64::Engine;
use uuid::Uuid;

use super::cursor::ENGINE;

/// The wire form, as the spec states it.
pub const PATTERN: &str = "^[A-Za-z0-9_-]{32}$";
const BYTES: usize = 24;

/// A position in the feed: every change after it (in `(position, id)` order) is still to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeToken {
    /// PostgreSQL: a transaction id; SQLite: the write counter.
    pub position: i64,
    pub id: Uuid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a change token is the `next` of a changes page: 32 characters of A-Z, a-z, 0-9, - and _")]
pub struct InvalidChangeToken;

impl ChangeToken {
    /// Before every change: the feed from the start.
    pub const START: ChangeToken = ChangeToken {
        position: 0,
        id: Uuid::nil(),
    };

    /// Before every change at `position` or later.
    pub fn before(position: i64) -> Self {
        ChangeToken {
            position,
            id: Uuid::nil(),
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = [0u8; BYTES];
        bytes[..8].copy_from_slice(&self.position.to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        ENGINE.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, InvalidChangeToken> {
        if text.len() != 32 {
            return Err(InvalidChangeToken);
        }
        let bytes = ENGINE.decode(text).map_err(|_| InvalidChangeToken)?;
        let bytes: [u8; BYTES] = bytes.try_into().map_err(|_| InvalidChangeToken)?;
        let position = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| InvalidChangeToken)?);
        let id = Uuid::from_slice(&bytes[8..]).map_err(|_| InvalidChangeToken)?;
        Ok(ChangeToken { position, id })
    }
}

// The query parameter: decoded as it is parsed, so a handler only sees valid ones.
opaque_parameter!(ChangeToken, PATTERN, ChangeToken::decode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_string_of_the_pattern_decodes() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        let token = ChangeToken {
            position: 1_234_567_890,
            id: Uuid::now_v7(),
        };
        let text = token.encode();
        assert!(pattern.is_match(&text), "{text}");
        assert_eq!(ChangeToken::decode(&text), Ok(token));
        for text in [
            "A".repeat(32),
            "_".repeat(32),
            "z".repeat(32),
            "-".repeat(32),
        ] {
            assert!(pattern.is_match(&text));
            assert!(ChangeToken::decode(&text).is_ok(), "{text}");
        }
        for bad in [
            "A".repeat(31),
            "A".repeat(33),
            "+".repeat(32),
            String::new(),
        ] {
            assert!(!pattern.is_match(&bad));
            assert_eq!(ChangeToken::decode(&bad), Err(InvalidChangeToken));
        }
    }
}
