//! The users resource as clients see it: each input rule (an email, a name, a search text)
//! written once as a [`TextRule`], from which both the spec and the server's check derive; and
//! the request and response bodies.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use entity::users;
use std::borrow::Cow;

use poem_openapi::Object;
use poem_openapi::registry::{MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{MaybeUndefined, ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use regex::Regex;
use uuid::Uuid;

use super::repository::{Change, NewUser, UserChanges};
use crate::http::error::ApiError;
use crate::http::text_rule::{Checked, TextRule, compile, one_value_type};

/// An email address: stored as given, unique case-insensitively.
pub type Email = Checked<EmailRule>;
/// A user's name, trimmed before it is stored.
pub type Name = Checked<NameRule>;
/// What a lookup by email searches for: any text an address could be.
pub type EmailKey = Checked<EmailKeyRule>;
/// The start of a name, for a case-insensitive prefix search.
pub type NamePrefix = Checked<NamePrefixRule>;

pub struct EmailRule;

impl TextRule for EmailRule {
    const FIELD: &'static str = "email";
    const MAX_CHARS: Option<usize> = Some(254);
    /// WHATWG's `type=email` syntax.
    const PATTERN: &'static str = r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$";
    const EXPECTED: &'static str = "a valid address (WHATWG's type=email syntax)";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(EmailRule::PATTERN));
        &REGEX
    }
}

pub struct NameRule;

impl TextRule for NameRule {
    const FIELD: &'static str = "name";
    const MAX_CHARS: Option<usize> = Some(200);
    /// Not blank, and no NUL, which PostgreSQL text cannot hold.
    const PATTERN: &'static str = r"^[^\x00]*[^\x00\s][^\x00]*$";
    const EXPECTED: &'static str = "text that is not only whitespace and has no NUL character";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(NameRule::PATTERN));
        &REGEX
    }
}

pub struct EmailKeyRule;

impl TextRule for EmailKeyRule {
    const FIELD: &'static str = "email";
    const MIN_CHARS: Option<usize> = Some(1);
    const MAX_CHARS: Option<usize> = EmailRule::MAX_CHARS;
    const PATTERN: &'static str = r"^[^\x00]*$";
    const EXPECTED: &'static str = "text with no NUL character";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(EmailKeyRule::PATTERN));
        &REGEX
    }
}

pub struct NamePrefixRule;

impl TextRule for NamePrefixRule {
    const FIELD: &'static str = "name_prefix";
    const MIN_CHARS: Option<usize> = Some(1);
    const MAX_CHARS: Option<usize> = NameRule::MAX_CHARS;
    const PATTERN: &'static str = r"^[^\x00]*$";
    const EXPECTED: &'static str = "text with no NUL character";

    fn regex() -> &'static Regex {
        static REGEX: LazyLock<Regex> = LazyLock::new(|| compile(NamePrefixRule::PATTERN));
        &REGEX
    }
}

/// A user account.
#[derive(Debug, Object)]
#[oai(rename = "User")]
pub struct User {
    /// UUID v7: ids sort by creation time.
    pub id: Uuid,
    /// As given at creation or last update; unique case-insensitively.
    pub email: String,
    /// Trimmed.
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// 1 at creation, one more at each update; the `ETag` is this number in quotes.
    pub version: i64,
}

impl From<users::Model> for User {
    fn from(user: users::Model) -> Self {
        Self {
            id: user.id,
            email: user.email,
            name: user.name,
            created_at: user.created_at,
            updated_at: user.updated_at,
            version: user.version,
        }
    }
}

/// A new user.
#[derive(Debug, Object)]
#[oai(rename = "CreateUser", deny_unknown_fields)]
pub struct CreateUserRequest {
    /// A valid address (WHATWG's `type=email` syntax), unique case-insensitively.
    pub email: Email,
    /// Not blank once surrounding whitespace is trimmed (as it is stored); no NUL, which
    /// PostgreSQL text cannot hold.
    pub name: Name,
}

impl From<CreateUserRequest> for NewUser {
    fn from(request: CreateUserRequest) -> Self {
        NewUser {
            email: request.email.into_inner(),
            name: trimmed(request.name),
        }
    }
}

/// Changes to a user: absent fields stay as they are; `null` is refused.
#[derive(Debug, Object)]
#[oai(rename = "UpdateUser", deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// A valid address (WHATWG's `type=email` syntax), unique case-insensitively.
    pub email: MaybeUndefined<Email>,
    /// Not blank once surrounding whitespace is trimmed (as it is stored); no NUL, which
    /// PostgreSQL text cannot hold.
    pub name: MaybeUndefined<Name>,
}

impl TryFrom<UpdateUserRequest> for UserChanges {
    type Error = ApiError;

    fn try_from(request: UpdateUserRequest) -> Result<Self, ApiError> {
        Ok(UserChanges {
            email: present(request.email)?.map(Email::into_inner),
            name: present(request.name)?.map(trimmed),
        })
    }
}

fn trimmed(name: Name) -> String {
    name.as_str().trim().to_owned()
}

fn present<R: TextRule>(value: MaybeUndefined<Checked<R>>) -> Result<Option<Checked<R>>, ApiError> {
    match value {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(ApiError::invalid_field(R::FIELD, "must not be null")),
        MaybeUndefined::Value(value) => Ok(Some(value)),
    }
}

/// One change of the feed: the user as it is now, or its deletion.
#[derive(Debug, Object)]
#[oai(rename = "UserChange")]
pub struct UserChange {
    pub id: Uuid,
    /// The user's version now; a deletion's is the deleted user's version plus one, so
    /// applying changes by version converges.
    pub version: i64,
    /// The user as it is now; `null` when it was deleted.
    pub user: UserOrDeleted,
}

/// A user, or `null` for a deleted one. poem-openapi writes an `Option` member as an optional
/// `User`, which a `null` would violate; OpenAPI 3.0 writes "this schema or null" as
/// `allOf: [User], nullable: true`, and the member is always present.
#[derive(Debug)]
pub struct UserOrDeleted(pub Option<User>);

impl Type for UserOrDeleted {
    one_value_type!();

    fn name() -> Cow<'static, str> {
        "User or null".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            all_of: vec![User::schema_ref()],
            nullable: true,
            ..MetaSchema::new("object")
        }))
    }

    fn register(registry: &mut Registry) {
        User::register(registry);
    }
}

impl ToJSON for UserOrDeleted {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(match &self.0 {
            Some(user) => user.to_json()?,
            None => serde_json::Value::Null,
        })
    }
}

impl ParseFromJSON for UserOrDeleted {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(Self(None)),
            value => User::parse_from_json(value)
                .map(|user| Self(Some(user)))
                .map_err(ParseError::propagate),
        }
    }
}

impl From<Change> for UserChange {
    fn from(change: Change) -> Self {
        Self {
            id: change.id,
            version: change.version,
            user: UserOrDeleted(change.user.map(User::from)),
        }
    }
}

/// A page of the change feed.
#[derive(Debug, Object)]
#[oai(rename = "UserChanges")]
pub struct ChangesPage {
    /// In commit order; a user may appear more than once across pages (at least once).
    pub changes: Vec<UserChange>,
    /// Pass as `since` for the changes after these: always present, the same position when
    /// nothing changed.
    pub next: String,
}

/// One page of users.
#[derive(Debug, Object)]
#[oai(rename = "UserPage")]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A page is written straight to bytes: poem-openapi's `Json` builds a `serde_json::Value` tree
/// and drops it, 63% of a list's instructions. The same bytes: keys in the order that tree
/// prints them (sorted: serde_json's map), times as its `to_rfc3339`; a test holds the two
/// equal.
impl serde::Serialize for UserPage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut page = serializer.serialize_struct("UserPage", 2)?;
        page.serialize_field("items", &self.items)?;
        page.serialize_field("next_cursor", &self.next_cursor)?;
        page.end()
    }
}

impl serde::Serialize for User {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut user = serializer.serialize_struct("User", 6)?;
        user.serialize_field("created_at", &self.created_at.to_rfc3339())?;
        user.serialize_field("email", &self.email)?;
        user.serialize_field("id", &self.id.hyphenated())?;
        user.serialize_field("name", &self.name)?;
        user.serialize_field("updated_at", &self.updated_at.to_rfc3339())?;
        user.serialize_field("version", &self.version)?;
        user.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_serializes_to_the_bytes_of_its_openapi_json() {
        use poem_openapi::types::ToJSON;
        let user = |name: &str, micros: i64| User {
            id: Uuid::now_v7(),
            email: format!("{}@example.com", name.len()),
            name: name.to_owned(),
            created_at: DateTime::from_timestamp_micros(micros).unwrap(),
            updated_at: DateTime::from_timestamp_micros(micros + 1).unwrap(),
            version: i64::MAX,
        };
        for page in [
            UserPage {
                items: vec![
                    user("Ada \"Lovelace\" \\ \u{1} \t", 1_780_000_000_000_000),
                    user("Ünïcödé 名前 🦀 </script>", 1_780_000_000_123_456),
                    user("x", -62_135_596_800_000_000),
                ],
                next_cursor: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
            },
            UserPage {
                items: Vec::new(),
                next_cursor: None,
            },
        ] {
            let expected = serde_json::to_vec(&page.to_json().unwrap()).unwrap();
            assert_eq!(
                String::from_utf8(serde_json::to_vec(&page).unwrap()).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn rules_check_what_their_patterns_say() {
        assert!(Email::parse("ada@example.com".into()).is_ok());
        assert!(Email::parse("not an address".into()).is_err());
        assert!(Email::parse(format!("{}@example.com", "a".repeat(250))).is_err());
        assert!(Name::parse(" Ada ".into()).is_ok());
        assert!(Name::parse(" \t ".into()).is_err());
        assert!(Name::parse("a\0b".into()).is_err());
        assert!(
            Name::parse("é".repeat(200)).is_ok(),
            "characters, not bytes"
        );
        assert!(Name::parse("é".repeat(201)).is_err());
        assert!(EmailKey::parse(String::new()).is_err());
        assert!(NamePrefix::parse("a".into()).is_ok());
    }
}
