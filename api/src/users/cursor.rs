//! The opaque keyset cursor of `listUsers`: the sort key of the last row of a page.
//!
//! Wire form: base64url without padding of 24 bytes (the timestamp in microseconds since the
//! Unix epoch, big-endian i64, then the user id), so exactly 32 characters of
//! `[A-Za-z0-9_-]`. Every such string decodes, so the spec's pattern is the whole contract: a
//! client can send nothing the pattern admits that the service then refuses. Which order the
//! key belongs to (`created_at` or `updated_at`) comes from the request: with `updated_since`
//! it continues the updated order.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromParameter, ParseResult, Type};
use uuid::Uuid;

const BYTES: usize = 24;
/// The wire form, as the spec states it; [`Cursor::decode`] accepts exactly these strings.
pub const PATTERN: &str = "^[A-Za-z0-9_-]{32}$";
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
}

/// The position after which the next page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a cursor is the next_cursor of a page: 32 characters of A-Z, a-z, 0-9, - and _")]
pub struct InvalidCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; BYTES];
        bytes[..8].copy_from_slice(&self.at.timestamp_micros().to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, InvalidCursor> {
        if text.len() != 32 {
            return Err(InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let bytes: [u8; BYTES] = bytes.try_into().map_err(|_| InvalidCursor)?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().map_err(|_| InvalidCursor)?);
        let max_micros = DateTime::<Utc>::MAX_UTC.timestamp_micros();
        let at = DateTime::from_timestamp_micros(micros.clamp(MIN_MICROS, max_micros))
            .ok_or(InvalidCursor)?;
        let id = Uuid::from_slice(&bytes[8..]).map_err(|_| InvalidCursor)?;
        Ok(Cursor { at, id })
    }
}

/// The `cursor` query parameter: decoded as it is parsed, so a handler only sees valid ones.
impl Type for Cursor {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            pattern: Some(PATTERN.to_owned()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromParameter for Cursor {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Cursor::decode(value).map_err(ParseError::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cursor = Cursor {
            at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        let text = cursor.encode();
        assert_eq!(text.len(), 32);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(Cursor::decode(&text), Ok(cursor));
    }

    #[test]
    fn every_string_of_the_pattern_decodes_within_the_database_range() {
        for text in [
            "A".repeat(32),
            "_".repeat(32),
            "-".repeat(32),
            "z".repeat(32),
            "9".repeat(32),
        ] {
            let cursor = Cursor::decode(&text).unwrap();
            assert!(cursor.at.timestamp_micros() >= MIN_MICROS, "{text}");
        }
    }

    #[test]
    fn rejects_what_the_pattern_does_not_admit() {
        let valid = Cursor {
            at: Utc::now(),
            id: Uuid::now_v7(),
        }
        .encode();
        for bad in [
            String::new(),
            "not a cursor".to_owned(),
            valid[..31].to_owned(),
            format!("{valid}A"),
            format!("{}=", &valid[..31]),
            "+".repeat(32),
            "A".repeat(10_000),
        ] {
            assert_eq!(Cursor::decode(&bad), Err(InvalidCursor), "{bad:?}");
        }
    }
}
