//! `Idempotency-Key` (the IETF httpapi draft; Stripe's semantics): a client's name for one
//! write, so that retrying it never writes twice. Its grammar is written once here; what a
//! keyed write does is the users wing's (`users/idempotency.rs`).

use std::sync::LazyLock;

use poem::http::HeaderName;
use regex::Regex;

use super::text_rule::{Checked, TextRule, compile};

/// The request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A key as a client sent it.
pub type IdempotencyKey = Checked<IdempotencyKeyRule>;

pub struct IdempotencyKeyRule;

impl TextRule for IdempotencyKeyRule {
    const FIELD: &'static str = "Idempotency-Key";
    const MIN_CHARS: Option<usize> = Some(1);
    const MAX_CHARS: Option<usize> = Some(255);
    // Visible ASCII (RFC 5234's VCHAR): what a client generates, a UUID most often.
    const PATTERN: &'static str = "^[!-~]+$";
    const EXPECTED: &'static str = "visible ASCII";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(IdempotencyKeyRule::PATTERN));
        &REGEX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "0190a7a2-6d0e-7c2e-9f4a-1b2c3d4e5f60",
            &"k".repeat(255),
            "!~",
        ] {
            assert!(IdempotencyKey::parse(good.to_owned()).is_ok(), "{good}");
        }
        for bad in ["", "two words", "caf\u{e9}", "tab\there", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
