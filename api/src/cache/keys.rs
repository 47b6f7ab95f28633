//! The cache's key names. None carries personal data: a user's key is its id, an email's key
//! the SHA-256 of the address folded to lower case.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Every key starts with this, so the service can share a Redis with others.
const NAMESPACE: &str = "users:";
/// The generation: readers trust only entries stamped with its current value.
pub const GENERATION: &str = "users:generation";
/// The prefix of a user's entry, followed by its id (simple form, 32 hex digits).
pub const USER_PREFIX: &str = "users:id:";

pub fn user(id: Uuid) -> String {
    let mut key = String::with_capacity(USER_PREFIX.len() + 32);
    key.push_str(USER_PREFIX);
    key.push_str(id.simple().encode_lower(&mut Uuid::encode_buffer()));
    key
}

/// The id as a user key's suffix, which an email's key points to.
pub fn user_suffix(id: Uuid) -> String {
    id.simple().to_string()
}

/// The key of an email, as lookups fold it: ASCII case-insensitively. `None` for an address
/// with other characters: stored addresses are ASCII (the email rule), so such a lookup finds
/// nobody, and it is left to the database rather than folded differently here.
pub fn email(address: &str) -> Option<String> {
    if !address.is_ascii() {
        return None;
    }
    let digest = Sha256::digest(address.to_ascii_lowercase().as_bytes());
    let mut key = String::with_capacity(NAMESPACE.len() + 6 + 64);
    key.push_str(NAMESPACE);
    key.push_str("email:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_no_personal_data_and_fold_case() {
        let key = email("Ada.Lovelace@Example.com").unwrap();
        assert_eq!(Some(key.clone()), email("ada.lovelace@example.COM"));
        assert!(!key.to_lowercase().contains("ada"), "{key}");
        assert_eq!(key.len(), "users:email:".len() + 64);
        assert_eq!(email("adá@example.com"), None);
        let id = Uuid::now_v7();
        assert_eq!(user(id), format!("{USER_PREFIX}{}", user_suffix(id)));
        assert!(GENERATION.starts_with(NAMESPACE) && USER_PREFIX.starts_with(NAMESPACE));
    }
}
