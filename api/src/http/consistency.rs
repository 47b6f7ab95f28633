//! `Consistency-Token`: read-your-writes across a replica. Every 2xx write answers with one; a
//! read that sends it back is answered only by a database that has applied that write. The
//! token is the primary's WAL position after the commit, in PostgreSQL's notation, or
//! `primary` when there is no position to give (no replica, SQLite, or the position could not
//! be read): a read with it goes to the primary. Opaque to clients; its grammar is written
//! once here.

use std::sync::LazyLock;

use poem::http::HeaderName;
use regex::Regex;

use super::text_rule::{Checked, TextRule, compile};
use crate::db::{Freshness, Lsn};

/// The header, in requests (reads) and responses (writes).
pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// A token sent back by a client; empty is the same as absent.
pub type ConsistencyToken = Checked<ConsistencyTokenRule>;

pub struct ConsistencyTokenRule;

/// Said of a write answered without a WAL position: reads with it go to the primary.
const ON_PRIMARY: &str = "primary";

impl TextRule for ConsistencyTokenRule {
    const FIELD: &'static str = "Consistency-Token";
    // Surrounding whitespace allowed: HTTP strips it from a header value before we see it.
    const PATTERN: &'static str = r"^\s*([0-9A-F]{1,8}/[0-9A-F]{1,8}|primary)?\s*$";
    const EXPECTED: &'static str = "a Consistency-Token as a write's answer gave it";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(ConsistencyTokenRule::PATTERN));
        &REGEX
    }
}

/// The token of a write committed before `position` (`None`: no position known).
pub fn token(position: Option<Lsn>) -> String {
    position.map_or_else(|| ON_PRIMARY.to_owned(), |position| position.to_string())
}

/// How fresh a read with this token must be.
pub fn freshness(token: Option<&ConsistencyToken>) -> Freshness {
    match token.map(|token| token.as_str().trim()) {
        None | Some("") => Freshness::Any,
        Some(token) => token
            .parse::<Lsn>()
            .map_or(Freshness::Latest, Freshness::Since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Freshness {
        freshness(Some(&ConsistencyToken::parse(text.to_owned()).unwrap()))
    }

    #[test]
    fn a_token_says_how_fresh_a_read_must_be() {
        assert_eq!(freshness(None), Freshness::Any);
        assert_eq!(parsed(""), Freshness::Any, "empty is absent");
        let position = Lsn(0x16_B374_D848);
        assert_eq!(parsed(&token(Some(position))), Freshness::Since(position));
        assert_eq!(parsed(&token(None)), Freshness::Latest);
        assert_eq!(parsed(" 1/2 "), Freshness::Since(Lsn(0x1_0000_0002)));
    }

    #[test]
    fn the_grammar_refuses_what_no_write_gave() {
        for bad in [
            "16/b374d848",
            "0/0/0",
            "123456789/0",
            "latest",
            "1/2 3/4",
            "1 /2",
        ] {
            assert!(ConsistencyToken::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
