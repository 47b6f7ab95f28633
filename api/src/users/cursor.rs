//! The opaque keyset cursor of `listUsers`: the sort key of the last row of a page, plus the
//! order it belongs to, so a cursor of one listing cannot be replayed against the other.
//!
//! Wire form: base64url (no padding) of 25 bytes: order tag, timestamp in microseconds since
//! the Unix epoch (big-endian i64), user id (16 bytes).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use uuid::Uuid;

const LEN: usize = 25;

/// Which listing a cursor continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Newest first on `(created_at, id)`.
    CreatedDesc,
    /// Oldest change first on `(updated_at, id)`, for `updated_since`.
    UpdatedAsc,
}

impl Order {
    fn tag(self) -> u8 {
        match self {
            Order::CreatedDesc => 1,
            Order::UpdatedAsc => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Order::CreatedDesc),
            2 => Some(Order::UpdatedAsc),
            _ => None,
        }
    }
}

/// The position after which the next page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub order: Order,
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("cursor is not one this service issued")]
pub struct InvalidCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; LEN];
        bytes[0] = self.order.tag();
        bytes[1..9].copy_from_slice(&self.at.timestamp_micros().to_be_bytes());
        bytes[9..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Self, InvalidCursor> {
        // A valid cursor is 34 characters; refuse anything longer before decoding it.
        if text.len() > 64 {
            return Err(InvalidCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| InvalidCursor)?;
        let bytes: [u8; LEN] = bytes.try_into().map_err(|_| InvalidCursor)?;
        let order = Order::from_tag(bytes[0]).ok_or(InvalidCursor)?;
        let micros = i64::from_be_bytes(bytes[1..9].try_into().map_err(|_| InvalidCursor)?);
        let at = DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
        let id = Uuid::from_slice(&bytes[9..]).map_err(|_| InvalidCursor)?;
        Ok(Cursor { order, at, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(order: Order) -> Cursor {
        Cursor {
            order,
            at: DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap(),
            id: Uuid::now_v7(),
        }
    }

    #[test]
    fn round_trips_both_orders() {
        for order in [Order::CreatedDesc, Order::UpdatedAsc] {
            let cursor = sample(order);
            let text = cursor.encode();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(Cursor::decode(&text), Ok(cursor));
        }
    }

    #[test]
    fn rejects_what_it_did_not_issue() {
        let valid = sample(Order::CreatedDesc).encode();
        let mut unknown_tag = URL_SAFE_NO_PAD.decode(&valid).unwrap();
        unknown_tag[0] = 9;
        for bad in [
            String::new(),
            "not a cursor".to_owned(),
            valid[..valid.len() - 1].to_owned(),
            format!("{valid}AA"),
            URL_SAFE_NO_PAD.encode(unknown_tag),
            "A".repeat(10_000),
        ] {
            assert_eq!(Cursor::decode(&bad), Err(InvalidCursor), "{bad:?}");
        }
    }
}
