//! Entity tags of users: strong, the version in quotes (`"3"`); and the `If-Match` /
//! `If-None-Match` header lists, whose grammar is written once here.

use std::sync::LazyLock;

use regex::Regex;

use super::repository::Precondition;
use crate::http::text_rule::{Checked, TextRule, compile};

pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// An `If-Match` or `If-None-Match` value: `*` or a list of entity tags (RFC 9110 §8.8.3);
/// empty is the same as absent.
pub type EntityTags = Checked<EntityTagsRule>;

pub struct EntityTagsRule;

impl TextRule for EntityTagsRule {
    const FIELD: &'static str = "entity tags";
    const PATTERN: &'static str =
        r#"^\s*(\*|(W/)?"[\x21\x23-\x7E]*"(\s*,\s*(W/)?"[\x21\x23-\x7E]*")*)?\s*$"#;
    const EXPECTED: &'static str = "`*` or a comma-separated list of entity tags such as \"3\"";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(EntityTagsRule::PATTERN));
        &REGEX
    }
}

/// `If-Match`: absent or empty, `*`, or a list of entity tags, compared strongly (RFC 9110
/// §13.1.1), so a weak tag never matches. Tags that are not versions of ours match nothing.
pub fn if_match(header: Option<&EntityTags>) -> Precondition {
    let Some(header) = header
        .map(EntityTags::as_str)
        .filter(|h| !h.trim().is_empty())
    else {
        return Precondition::Any;
    };
    if header.trim() == "*" {
        return Precondition::Any;
    }
    Precondition::OneOf(
        tags(header)
            .filter(|tag| !tag.weak)
            .filter_map(|tag| tag.version)
            .collect(),
    )
}

/// `If-None-Match`: true when it names the current version, compared weakly (RFC 9110
/// §13.1.2), or is `*`.
pub fn none_match(header: Option<&EntityTags>, version: i64) -> bool {
    match header
        .map(EntityTags::as_str)
        .filter(|h| !h.trim().is_empty())
    {
        None => false,
        Some(header) if header.trim() == "*" => true,
        Some(header) => tags(header).any(|tag| tag.version == Some(version)),
    }
}

struct Tag {
    weak: bool,
    version: Option<i64>,
}

fn tags(header: &str) -> impl Iterator<Item = Tag> + '_ {
    header.split(',').map(|tag| {
        let tag = tag.trim();
        let (weak, opaque) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let version = opaque
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok());
        Tag { weak, version }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text: &str) -> EntityTags {
        EntityTags::parse(text.to_owned()).unwrap()
    }

    fn if_match_of(text: &str) -> Precondition {
        if_match(Some(&header(text)))
    }

    #[test]
    fn if_match_is_strong() {
        assert_eq!(if_match(None), Precondition::Any);
        assert_eq!(if_match_of(" * "), Precondition::Any);
        assert_eq!(if_match_of(""), Precondition::Any, "empty is absent");
        assert_eq!(if_match_of("\"3\""), Precondition::OneOf(vec![3]));
        assert_eq!(if_match_of("\"1\", \"2\""), Precondition::OneOf(vec![1, 2]));
        assert_eq!(if_match_of("W/\"3\""), Precondition::OneOf(vec![]));
        assert_eq!(if_match_of("\"x\""), Precondition::OneOf(vec![]));
        assert_eq!(if_match_of("\"+3\""), Precondition::OneOf(vec![]));
    }

    #[test]
    fn none_match_is_weak() {
        let matches = |text: &str, version| none_match(Some(&header(text)), version);
        assert!(matches("\"3\"", 3));
        assert!(matches("W/\"3\"", 3));
        assert!(matches("\"1\", W/\"3\"", 3));
        assert!(matches("*", 3));
        assert!(!matches("\"2\"", 3));
        assert!(!none_match(None, 3));
        assert!(!matches(" ", 3));
    }

    #[test]
    fn the_grammar_refuses_what_is_not_a_tag_list() {
        for bad in ["3", "\"3", "\"3\" \"4\"", "W/3", "**"] {
            assert!(EntityTags::parse(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn etag_is_the_quoted_version() {
        assert_eq!(etag(3), "\"3\"");
    }
}
