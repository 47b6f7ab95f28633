//! The opaque keyset cursor of `listUsers`: the sort key of the last row of a page.
//!
//! Wire form: base64url without padding of 24 bytes (the timestamp in microseconds since the
//! Unix epoch, big-endian i64, then the user id), 32 characters of `[A-Za-z0-9_-]`, followed
//! in a name search by the last name's UTF-8 bytes. Every string of [`PATTERN`] decodes, so the
//! spec's pattern is the whole contract: a client can send nothing the pattern admits that the
//! service then refuses. Which order the key belongs to comes from the request
//! ([`Order::of`]): with `updated_since` the updated order, else with `name_prefix` the name
//! order, else the created order.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The timestamp and the id.
const KEY_BYTES: usize = 24;
/// The wire form, as the spec states it; [`Cursor::decode`] accepts exactly these strings: 32
/// characters, then whole groups of four and at most one tail of two or three (a lone
/// character carries less than a byte). Room for a name of 200 four-byte characters.
pub const PATTERN: &str = "^[A-Za-z0-9_-]{32}(?:[A-Za-z0-9_-]{4}){0,270}(?:[A-Za-z0-9_-]{2,3})?$";
/// The longest cursor [`PATTERN`] admits.
const MAX_LEN: usize = 32 + 4 * 270 + 3;
/// base64url without padding, tolerant of the unused low bits of a tail (a strict decoder
/// refuses some strings the pattern admits).
pub(super) const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);
/// The earliest instant PostgreSQL's `timestamptz` holds (4713 BC); a cursor's time is
/// clamped into what both chrono and the database can hold.
const MIN_MICROS: i64 = -210_866_803_200_000_000;

/// Which listing a cursor continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest first on `(created_at, id)`.
    CreatedDesc,
    /// Oldest change first on `(updated_at, id)`, for `updated_since`.
    UpdatedAsc,
    /// By case-folded name, then id, for `name_prefix`: one range of the name index, so a
    /// search costs the same whatever the prefix (newest first among a prefix's matches has no
    /// index that bounds it).
    NameAsc,
}

impl Order {
    /// The order a listing with these filters is in.
    pub fn of(name_prefix: bool, updated_since: bool) -> Self {
        match (name_prefix, updated_since) {
            (_, true) => Order::UpdatedAsc,
            (true, false) => Order::NameAsc,
            (false, false) => Order::CreatedDesc,
        }
    }
}

/// The position after which the next page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
    /// The name, in the name order; empty in the others.
    pub name: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a cursor is the next_cursor of a page: 32 or more characters of A-Z, a-z, 0-9, - and _")]
pub struct InvalidCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(KEY_BYTES + self.name.len());
        bytes.extend_from_slice(&self.at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(self.name.as_bytes());
        ENGINE.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, InvalidCursor> {
        if text.len() < 32 || text.len() > MAX_LEN {
            return Err(InvalidCursor);
        }
        let bytes = ENGINE.decode(text).map_err(|_| InvalidCursor)?;
        let (key, name) = bytes.split_at_checked(KEY_BYTES).ok_or(InvalidCursor)?;
        let micros = i64::from_be_bytes(key[..8].try_into().map_err(|_| InvalidCursor)?);
        let max_micros = DateTime::<Utc>::MAX_UTC.timestamp_micros();
        let at = DateTime::from_timestamp_micros(micros.clamp(MIN_MICROS, max_micros))
            .ok_or(InvalidCursor)?;
        let id = Uuid::from_slice(&key[8..]).map_err(|_| InvalidCursor)?;
        // Only a tampered cursor carries bytes that are not UTF-8, or NUL (no name has one, and
        // PostgreSQL refuses it in text): they are left out (not replaced, which would lengthen
        // it), and it still names a position.
        let name = name
            .utf8_chunks()
            .flat_map(|chunk| chunk.valid().chars())
            .filter(|&c| c != '\0')
            .collect();
        Ok(Cursor { at, id, name })
    }
}

// The query parameter: decoded as it is parsed, so a handler only sees valid ones.
opaque_parameter!(Cursor, PATTERN, Cursor::decode);

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern() -> regex::Regex {
        regex::Regex::new(PATTERN).unwrap()
    }

    #[test]
    fn round_trips() {
        for name in ["", "Ada Lovelace", "Ünïcödé 名前 🦀", &"𝔸".repeat(200)] {
            let cursor = Cursor {
                at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
                id: Uuid::now_v7(),
                name: name.to_owned(),
            };
            let text = cursor.encode();
            assert!(pattern().is_match(&text), "{text}");
            assert_eq!(Cursor::decode(&text), Ok(cursor));
        }
    }

    #[test]
    fn a_tampered_name_loses_what_no_name_holds() {
        let mut bytes = vec![0u8; KEY_BYTES];
        bytes.extend_from_slice(b"a\0b\xffc");
        let cursor = Cursor::decode(&ENGINE.encode(bytes)).unwrap();
        assert_eq!(cursor.name, "abc");
    }

    #[test]
    fn a_cursor_without_a_name_keeps_the_32_characters_of_before() {
        let cursor = Cursor {
            at: Utc::now(),
            id: Uuid::now_v7(),
            name: String::new(),
        };
        assert_eq!(cursor.encode().len(), 32);
    }

    #[test]
    fn every_string_of_the_pattern_decodes_within_the_database_range() {
        for text in [
            "A".repeat(32),
            "_".repeat(32),
            "-".repeat(32),
            "z".repeat(32),
            "9".repeat(32),
            "_".repeat(34),
            "-".repeat(35),
            "z".repeat(36),
            "9".repeat(MAX_LEN),
        ] {
            assert!(pattern().is_match(&text), "{text}");
            let cursor = Cursor::decode(&text).unwrap();
            assert!(cursor.at.timestamp_micros() >= MIN_MICROS, "{text}");
        }
    }

    #[test]
    fn rejects_what_the_pattern_does_not_admit() {
        let valid = Cursor {
            at: Utc::now(),
            id: Uuid::now_v7(),
            name: String::new(),
        }
        .encode();
        for bad in [
            String::new(),
            "not a cursor".to_owned(),
            valid[..31].to_owned(),
            format!("{valid}A"),
            format!("{}=", &valid[..31]),
            "+".repeat(32),
            "A".repeat(MAX_LEN + 1),
            "A".repeat(10_000),
        ] {
            assert!(!pattern().is_match(&bad), "{bad:?}");
            assert_eq!(Cursor::decode(&bad), Err(InvalidCursor), "{bad:?}");
        }
    }
}
