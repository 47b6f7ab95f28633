//! A user's entry as `store.lua` writes it: `"{generation} {version} {json}"`, or `D` for a
//! deleted user.

use bytes::Bytes;

/// The value of a deleted user's entry: no store overwrites it until it expires.
pub const TOMBSTONE: &str = "D";

/// A cached user: its version and its JSON, exactly as the API serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub version: i64,
    pub json: Bytes,
}

/// The entry in `value` when it is stamped with `generation`; `None` for a tombstone, an
/// entry of another generation, or anything unreadable.
pub fn current(value: Bytes, generation: &[u8]) -> Option<Entry> {
    let mut fields = value.splitn(3, |&byte| byte == b' ');
    let stamp = fields.next()?;
    let version = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    let json_len = fields.next()?.len();
    if stamp != generation {
        return None;
    }
    let json = value.slice(value.len() - json_len..);
    Some(Entry { version, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_of_the_current_generation_are_read() {
        // As store.lua writes it.
        let value = Bytes::from_static(br#"7 3 {"id":"x y"}"#);
        assert_eq!(
            current(value.clone(), b"7"),
            Some(Entry {
                version: 3,
                json: Bytes::from_static(br#"{"id":"x y"}"#)
            })
        );
        assert_eq!(current(value, b"8"), None);
        assert_eq!(
            current(Bytes::from_static(TOMBSTONE.as_bytes()), b"7"),
            None
        );
        assert_eq!(current(Bytes::from_static(b"7 x {}"), b"7"), None);
    }
}
