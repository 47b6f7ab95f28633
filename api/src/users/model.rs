//! Request and response bodies of the users API, with their limits. The limits are declared
//! as poem-openapi validators, so the spec a client is generated from and the check the
//! server runs are one and the same.

use chrono::{DateTime, Utc};
use entity::users;
use poem_openapi::Object;
use poem_openapi::types::MaybeUndefined;
use uuid::Uuid;

use crate::error::ApiError;
use crate::users::repository::{NewUser, UserChanges};
use crate::users::text::Text;

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
    /// A valid address (WHATWG's `type=email` syntax) of at most 254 characters, unique
    /// case-insensitively.
    #[oai(validator(
        max_length = 254,
        pattern = r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
    ))]
    pub email: Text,
    /// 1 to 200 characters after trimming surrounding whitespace; no NUL, which PostgreSQL
    /// text cannot hold.
    #[oai(validator(max_length = 200, pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
    pub name: Text,
}

impl From<CreateUserRequest> for NewUser {
    fn from(request: CreateUserRequest) -> Self {
        NewUser {
            email: request.email.0,
            name: request.name.0.trim().to_owned(),
        }
    }
}

/// Changes to a user: absent fields stay as they are; `null` is refused.
#[derive(Debug, Object)]
#[oai(rename = "UpdateUser", deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// A valid address (WHATWG's `type=email` syntax) of at most 254 characters, unique
    /// case-insensitively.
    #[oai(validator(
        max_length = 254,
        pattern = r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$"
    ))]
    pub email: MaybeUndefined<Text>,
    /// 1 to 200 characters after trimming surrounding whitespace; no NUL, which PostgreSQL
    /// text cannot hold.
    #[oai(validator(max_length = 200, pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
    pub name: MaybeUndefined<Text>,
}

impl TryFrom<UpdateUserRequest> for UserChanges {
    type Error = ApiError;

    fn try_from(request: UpdateUserRequest) -> Result<Self, ApiError> {
        Ok(UserChanges {
            email: present("email", request.email)?,
            name: present("name", request.name)?.map(|name| name.trim().to_owned()),
        })
    }
}

fn present(field: &str, value: MaybeUndefined<Text>) -> Result<Option<String>, ApiError> {
    match value {
        MaybeUndefined::Undefined => Ok(None),
        MaybeUndefined::Null => Err(ApiError::invalid_field(field, "must not be null")),
        MaybeUndefined::Value(value) => Ok(Some(value.0)),
    }
}

/// One page of users.
#[derive(Debug, Object)]
#[oai(rename = "UserPage")]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}
