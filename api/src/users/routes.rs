//! The users endpoints: HTTP in, one service call (the repository behind the cache), HTTP out.
//! No SQL here.

use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi, Tags};
use uuid::Uuid;

use super::change_token::ChangeToken;
use super::cursor::Cursor;
use super::etag::{EntityTags, etag, if_match, none_match};
use super::idempotency::{KeyClaim, KeyedWrite};
use super::repository::{ListQuery, NewUser, RepoError, UserChanges};
use super::service::UserService;
use super::wire::{
    ChangesPage, CreateUserRequest, EmailKey, NamePrefix, UpdateUserRequest, User, UserChange,
    UserPage,
};
use crate::http::API_PREFIX;
use crate::http::auth::Principal;
use crate::http::consistency::{ConsistencyToken, freshness, token};
use crate::http::encoded_json::EncodedJson;
use crate::http::error::{ApiError, ErrorCode, Errors, error_set};
use crate::http::idempotency::IdempotencyKey;

const DEFAULT_LIMIT: u32 = 50;
/// The change feed's default page size.
const DEFAULT_CHANGES_LIMIT: u32 = 100;
/// When to retry a write whose key's first request is running: one statement's time, most
/// often milliseconds.
const IN_PROGRESS_RETRY: Duration = Duration::from_secs(1);

error_set!(CreateErrors: InvalidRequest, Forbidden, RequestTimeout, EmailTaken, IdempotencyKeyReused, IdempotencyInProgress, PayloadTooLarge, UnsupportedMediaType);
error_set!(ReadErrors: InvalidRequest, UserNotFound);
error_set!(ListErrors: InvalidRequest);
error_set!(ChangesErrors: InvalidRequest, ChangesExpired);
error_set!(UpdateErrors: InvalidRequest, Forbidden, UserNotFound, RequestTimeout, EmailTaken, VersionMismatch, IdempotencyKeyReused, IdempotencyInProgress, PayloadTooLarge, UnsupportedMediaType);
error_set!(DeleteErrors: InvalidRequest, Forbidden, UserNotFound, VersionMismatch);

#[derive(Tags)]
enum ApiTags {
    /// Create, read, look up, list, update and delete users.
    Users,
}

#[derive(ApiResponse)]
enum Created {
    /// The user was created.
    #[oai(status = 201)]
    Created(
        EncodedJson<User>,
        /// The new user's URL.
        #[oai(header = "Location")]
        String,
        /// The user's version, for `If-Match` on later writes.
        #[oai(header = "ETag")]
        String,
        /// Send it back on reads to see this write (read-your-writes).
        #[oai(header = "Consistency-Token")]
        String,
    ),
}

#[derive(ApiResponse)]
enum Found {
    /// The user.
    #[oai(status = 200)]
    Ok(
        EncodedJson<User>,
        /// The user's version, for `If-None-Match` and `If-Match`.
        #[oai(header = "ETag")]
        String,
    ),
    /// The user is unchanged since the version in `If-None-Match`.
    #[oai(status = 304)]
    NotModified(
        /// The user's version, the one named in `If-None-Match`.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
enum LookedUp {
    /// The user with this email.
    #[oai(status = 200)]
    Ok(
        EncodedJson<User>,
        /// The user's version, for `If-Match` on later writes.
        #[oai(header = "ETag")]
        String,
    ),
}

#[derive(ApiResponse)]
enum Listed {
    /// A page of users.
    #[oai(status = 200)]
    Ok(EncodedJson<UserPage>),
}

#[derive(ApiResponse)]
enum ChangesListed {
    /// Changes in commit order, and the token for the next ones.
    #[oai(status = 200)]
    Ok(Json<ChangesPage>),
}

#[derive(ApiResponse)]
enum Updated {
    /// The user after the update.
    #[oai(status = 200)]
    Ok(
        EncodedJson<User>,
        /// The user's new version, for `If-Match` on later writes.
        #[oai(header = "ETag")]
        String,
        /// Send it back on reads to see this write (read-your-writes).
        #[oai(header = "Consistency-Token")]
        String,
    ),
}

#[derive(ApiResponse)]
enum Deleted {
    /// The user was deleted.
    #[oai(status = 204)]
    NoContent(
        /// Send it back on reads to see this write (read-your-writes).
        #[oai(header = "Consistency-Token")]
        String,
    ),
}

/// What a lookup missed by, for the 404's detail.
#[derive(Clone, Copy)]
enum Key {
    Id,
    Email,
}

pub struct UsersApi {
    users: UserService,
    /// How long a client should wait before retrying when the database is unavailable.
    retry_after: Duration,
    /// The longest a change-feed long poll holds an empty answer: a second inside the request
    /// timeout, so it answers rather than time out.
    max_wait: Duration,
    /// How long an idempotency key's answer is kept.
    idempotency_ttl: Duration,
}

impl UsersApi {
    pub fn new(
        users: UserService,
        retry_after: Duration,
        request_timeout: Duration,
        idempotency_ttl: Duration,
    ) -> Self {
        Self {
            users,
            retry_after,
            max_wait: request_timeout.saturating_sub(Duration::from_secs(1)),
            idempotency_ttl,
        }
    }

    /// The claim of a write sent with an `Idempotency-Key`.
    fn claim(
        &self,
        principal: &Principal,
        key: Option<&IdempotencyKey>,
        write: KeyedWrite<'_>,
    ) -> Option<KeyClaim> {
        key.map(|key| KeyClaim::new(principal, key, &write, self.idempotency_ttl))
    }

    fn fail(&self, key: Key) -> impl Fn(RepoError) -> ApiError + '_ {
        move |error| match error {
            RepoError::NotFound => ApiError::new(
                ErrorCode::UserNotFound,
                match key {
                    Key::Id => "no user has this id",
                    Key::Email => "no user has this email",
                },
            ),
            RepoError::EmailTaken => ErrorCode::EmailTaken.into(),
            RepoError::VersionMismatch => ErrorCode::VersionMismatch.into(),
            RepoError::ChangesExpired => ErrorCode::ChangesExpired.into(),
            RepoError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused.into(),
            RepoError::IdempotencyInProgress => {
                ApiError::retry_after(ErrorCode::IdempotencyInProgress, IN_PROGRESS_RETRY)
            }
            RepoError::Unavailable(_) => {
                ApiError::retry_after(ErrorCode::DatabaseUnavailable, self.retry_after)
            }
            RepoError::Other(_) => ErrorCode::Internal.into(),
        }
    }
}

/// The URL of a user, as `Location` gives it.
fn location(id: Uuid) -> String {
    format!("{API_PREFIX}/users/{id}")
}

#[OpenApi(prefix_path = API_PREFIX, tag = "ApiTags::Users")]
impl UsersApi {
    /// Create a user.
    ///
    /// With an `Idempotency-Key`, a retry of the same request (lost answer, timeout) is
    /// answered as the first was, whichever instance answers it, and creates nothing.
    #[oai(path = "/users", method = "post", operation_id = "createUser")]
    async fn create(
        &self,
        body: Json<CreateUserRequest>,
        /// A unique key per request, such as a UUID: a retry with the same key and request
        /// within `IDEMPOTENCY_TTL_SECS` (a day by default) answers as the first did, without
        /// running again; another request under the key is 422 `idempotency_key_reused`.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
        principal: Data<&Principal>,
    ) -> Result<Created, Errors<CreateErrors>> {
        let new = NewUser::from(body.0);
        let claim = self.claim(&principal, idempotency_key.0.as_ref(), new.keyed());
        let created = self
            .users
            .create(new, claim.as_ref())
            .await
            .map_err(self.fail(Key::Id))?;
        let (id, user) = created.value;
        Ok(Created::Created(
            user.body,
            location(id),
            etag(user.version),
            token(created.position),
        ))
    }

    /// Get a user by id.
    ///
    /// With `If-None-Match` naming its current version, 304 without a body: a client's copy is
    /// still good.
    #[oai(path = "/users/:id", method = "get", operation_id = "getUser")]
    async fn get(
        &self,
        /// The user's id, as `createUser` answered it.
        id: Path<Uuid>,
        /// Answer 304 when the user still has one of these versions (weak comparison). Empty is
        /// the same as absent.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<EntityTags>>,
        /// A write's `Consistency-Token`: the answer reflects that write.
        #[oai(name = "Consistency-Token")]
        consistency: Header<Option<ConsistencyToken>>,
    ) -> Result<Found, Errors<ReadErrors>> {
        let user = self
            .users
            .get(id.0, freshness(consistency.0.as_ref()))
            .await
            .map_err(self.fail(Key::Id))?;
        let tag = etag(user.version);
        if none_match(if_none_match.0.as_ref(), user.version) {
            return Ok(Found::NotModified(tag));
        }
        Ok(Found::Ok(user.body, tag))
    }

    /// Look up a user by email, case-insensitively.
    ///
    /// Emails are unique compared case-insensitively, so at most one user answers.
    #[oai(
        path = "/users/lookup",
        method = "get",
        operation_id = "lookupUserByEmail"
    )]
    async fn lookup(
        &self,
        /// The email to look up, in any case.
        email: Query<EmailKey>,
        /// A write's `Consistency-Token`: the answer reflects that write.
        #[oai(name = "Consistency-Token")]
        consistency: Header<Option<ConsistencyToken>>,
    ) -> Result<LookedUp, Errors<ReadErrors>> {
        let user = self
            .users
            .lookup(email.0.as_str(), freshness(consistency.0.as_ref()))
            .await
            .map_err(self.fail(Key::Email))?;
        Ok(LookedUp::Ok(user.body, etag(user.version)))
    }

    /// List users, newest first, one page at a time.
    ///
    /// With `name_prefix`, lists the users whose name starts with it, case-insensitively, by
    /// name (case-folded, compared by code point), then id: as an autocomplete expects, and in
    /// the same time whatever the prefix. With `updated_since`, lists the users changed at or
    /// after that time, oldest change first (a filter: it misses changes committed late and
    /// deletions). Pass a page's `next_cursor` as `cursor` for the next page, with the same
    /// `name_prefix` and `updated_since`.
    #[oai(path = "/users", method = "get", operation_id = "listUsers")]
    async fn list(
        &self,
        /// Page size, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<u32>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<Cursor>>,
        /// Only users whose name starts with this, case-insensitively.
        name_prefix: Query<Option<NamePrefix>>,
        /// Only users changed at or after this time (RFC 3339).
        updated_since: Query<Option<DateTime<Utc>>>,
        /// A write's `Consistency-Token`: the page reflects that write.
        #[oai(name = "Consistency-Token")]
        consistency: Header<Option<ConsistencyToken>>,
    ) -> Result<Listed, Errors<ListErrors>> {
        let query = ListQuery {
            limit: limit.0.unwrap_or(DEFAULT_LIMIT).into(),
            after: cursor.0,
            name_prefix: name_prefix.0.map(NamePrefix::into_inner),
            updated_since: updated_since.0,
        };
        let page = self
            .users
            .list(query, freshness(consistency.0.as_ref()))
            .await
            .map_err(self.fail(Key::Id))?;
        Ok(Listed::Ok(EncodedJson::serialize(&UserPage {
            items: page.items.into_iter().map(User::from).collect(),
            next_cursor: page.next.map(|cursor| cursor.encode()),
        })))
    }

    /// List changes to users in commit order: for each user changed after `since`, its
    /// newest version or its deletion.
    ///
    /// Follow `next` from any token and you see every change after it, whichever instance
    /// wrote it and whatever the clocks say (at least once: a user may come again); applying
    /// the changes in order converges to the database's state. Without `since`, every user
    /// there is, then the deletions still retained. Deletions are retained
    /// `CHANGES_RETENTION_HOURS` (a week by default): a token older than that is 410
    /// `changes_expired`, and the consumer starts again without `since`.
    #[oai(
        path = "/users/changes",
        method = "get",
        operation_id = "listUserChanges"
    )]
    async fn changes(
        &self,
        /// The `next` of the previous page; absent: from the start.
        since: Query<Option<ChangeToken>>,
        /// Changes per page, 1 to 1000 (default 100).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// Seconds to hold an empty answer until a change arrives, 0 to 30 (default 0: answer
        /// at once); at most a second less than the request timeout.
        #[oai(validator(minimum(value = "0"), maximum(value = "30")))]
        wait: Query<Option<u32>>,
        /// A write's `Consistency-Token`: the page reflects that write.
        #[oai(name = "Consistency-Token")]
        consistency: Header<Option<ConsistencyToken>>,
    ) -> Result<ChangesListed, Errors<ChangesErrors>> {
        let limit = limit.0.unwrap_or(DEFAULT_CHANGES_LIMIT).into();
        let wait = Duration::from_secs(wait.0.unwrap_or(0).into()).min(self.max_wait);
        let page = self
            .users
            .changes(since.0, limit, wait, freshness(consistency.0.as_ref()))
            .await
            .map_err(self.fail(Key::Id))?;
        Ok(ChangesListed::Ok(Json(ChangesPage {
            changes: page.changes.into_iter().map(UserChange::from).collect(),
            next: page.next.encode(),
        })))
    }

    /// Update a user's email or name.
    ///
    /// With an `Idempotency-Key`, a retry of the same request is answered as the first was
    /// (no 412 for the version it wrote itself), and updates nothing.
    #[oai(path = "/users/:id", method = "patch", operation_id = "updateUser")]
    async fn update(
        &self,
        /// The user's id.
        id: Path<Uuid>,
        /// Update only if the user still has this version (strong comparison; `*` for any).
        /// Empty is the same as absent.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<EntityTags>>,
        /// A unique key per request, such as a UUID: a retry with the same key and request
        /// within `IDEMPOTENCY_TTL_SECS` (a day by default) answers as the first did, without
        /// running again; another request under the key is 422 `idempotency_key_reused`.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<IdempotencyKey>>,
        principal: Data<&Principal>,
        body: Json<UpdateUserRequest>,
    ) -> Result<Updated, Errors<UpdateErrors>> {
        let changes = UserChanges::try_from(body.0)?;
        let precondition = if_match(if_match_header.0.as_ref());
        let write = changes.keyed(id.0, &precondition);
        let claim = self.claim(&principal, idempotency_key.0.as_ref(), write);
        let updated = self
            .users
            .update(id.0, changes, precondition, claim.as_ref())
            .await
            .map_err(self.fail(Key::Id))?;
        let user = updated.value;
        Ok(Updated::Ok(
            user.body,
            etag(user.version),
            token(updated.position),
        ))
    }

    /// Delete a user.
    ///
    /// The deletion reaches change-feed consumers as the user's last change (`user: null`).
    #[oai(path = "/users/:id", method = "delete", operation_id = "deleteUser")]
    async fn delete(
        &self,
        /// The user's id.
        id: Path<Uuid>,
        /// Delete only if the user still has this version (strong comparison; `*` for any).
        /// Empty is the same as absent.
        #[oai(name = "If-Match")]
        if_match_header: Header<Option<EntityTags>>,
    ) -> Result<Deleted, Errors<DeleteErrors>> {
        let deleted = self
            .users
            .delete(id.0, if_match(if_match_header.0.as_ref()))
            .await
            .map_err(self.fail(Key::Id))?;
        Ok(Deleted::NoContent(token(deleted.position)))
    }
}
