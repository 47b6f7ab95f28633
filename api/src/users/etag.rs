//! Entity tags of users: strong, the version in quotes (`"3"`).

use super::repository::Precondition;

pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// `If-Match`: absent or empty, `*`, or a list of entity tags, compared strongly (RFC 9110 §13.1.1), so a weak
/// tag never matches. Tags that are not versions of ours match nothing.
pub fn if_match(header: Option<&str>) -> Precondition {
    let Some(header) = header.filter(|h| !h.trim().is_empty()) else {
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
pub fn none_match(header: Option<&str>, version: i64) -> bool {
    match header.filter(|h| !h.trim().is_empty()) {
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

    #[test]
    fn if_match_is_strong() {
        assert_eq!(if_match(None), Precondition::Any);
        assert_eq!(if_match(Some(" * ")), Precondition::Any);
        assert_eq!(if_match(Some("")), Precondition::Any, "empty is absent");
        assert_eq!(if_match(Some("\"3\"")), Precondition::OneOf(vec![3]));
        assert_eq!(
            if_match(Some("\"1\", \"2\"")),
            Precondition::OneOf(vec![1, 2])
        );
        assert_eq!(if_match(Some("W/\"3\"")), Precondition::OneOf(vec![]));
        assert_eq!(if_match(Some("3")), Precondition::OneOf(vec![]));
        assert_eq!(if_match(Some("\"x\"")), Precondition::OneOf(vec![]));
        assert_eq!(if_match(Some("\"+3\"")), Precondition::OneOf(vec![]));
    }

    #[test]
    fn none_match_is_weak() {
        assert!(none_match(Some("\"3\""), 3));
        assert!(none_match(Some("W/\"3\""), 3));
        assert!(none_match(Some("\"1\", W/\"3\""), 3));
        assert!(none_match(Some("*"), 3));
        assert!(!none_match(Some("\"2\""), 3));
        assert!(!none_match(None, 3));
        assert!(!none_match(Some(" "), 3));
    }

    #[test]
    fn etag_is_the_quoted_version() {
        assert_eq!(etag(3), "\"3\"");
    }
}
