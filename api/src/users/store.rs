//! The users as the endpoints read and write them: the repository, with the cache (when
//! `REDIS_URL` is set) in front of reads by id and by email, and every committed write carried
//! to the cache before its response. The coherence rules are the cache wing's (cache/mod.rs).

use std::borrow::Cow;
use std::future::Future;

use entity::users;
use uuid::Uuid;

use super::model::User;
use super::repository::{
    ListQuery, NewUser, Page, Precondition, RepoError, UserChanges, UserRepository,
};
use crate::cache::{Cache, Entry, Read, Stamp};
use crate::http::encoded_json::EncodedJson;

/// A user as the API serves it: its version (the `ETag`) and its JSON.
pub struct UserJson {
    pub version: i64,
    pub body: EncodedJson<User>,
}

impl UserJson {
    fn of(user: users::Model) -> Self {
        Self {
            version: user.version,
            body: EncodedJson::encode(&User::from(user)),
        }
    }

    fn cached(entry: Entry) -> Self {
        Self {
            version: entry.version,
            body: EncodedJson::from_bytes(entry.json),
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            version: self.version,
            json: self.body.bytes().clone(),
        }
    }
}

#[derive(Clone)]
pub struct UserStore {
    repository: UserRepository,
    cache: Option<Cache>,
}

impl UserStore {
    pub fn new(repository: UserRepository, cache: Option<Cache>) -> Self {
        Self { repository, cache }
    }

    pub async fn create(&self, new: NewUser) -> Result<(Uuid, UserJson), RepoError> {
        let stamp = self.stamp();
        let user = self.repository.create(new).await?;
        let id = user.id;
        Ok((id, self.written(stamp, user).await))
    }

    pub async fn get(&self, id: Uuid) -> Result<UserJson, RepoError> {
        let read = match &self.cache {
            Some(cache) => cache.get(id).await,
            None => Read::Unavailable,
        };
        self.read_through(read, self.repository.find_by_id(id))
            .await
    }

    pub async fn lookup(&self, email: &str) -> Result<UserJson, RepoError> {
        let read = match &self.cache {
            Some(cache) => cache.lookup(email, |entry| has_email(entry, email)).await,
            None => Read::Unavailable,
        };
        self.read_through(read, self.repository.find_by_email(email))
            .await
    }

    /// A hit as it is; otherwise the database's answer, filled into the cache after a miss.
    async fn read_through(
        &self,
        read: Read,
        database: impl Future<Output = Result<users::Model, RepoError>>,
    ) -> Result<UserJson, RepoError> {
        let stamp = match read {
            Read::Hit(entry) => return Ok(UserJson::cached(entry)),
            Read::Miss(stamp) => Some(stamp),
            Read::Unavailable => None,
        };
        let user = database.await?;
        // The id and email outlive the row only when the cache will store them.
        let fill = self
            .cache
            .as_ref()
            .zip(stamp)
            .map(|to| (to, user.id, user.email.clone()));
        let json = UserJson::of(user);
        if let Some(((cache, stamp), id, email)) = fill {
            cache.fill(stamp, id, &json.entry(), Some(&email)).await;
        }
        Ok(json)
    }

    /// Lists are not cached: a page would go stale with any write to any of its users.
    pub async fn list(&self, query: ListQuery) -> Result<Page, RepoError> {
        self.repository.list(query).await
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        precondition: Precondition,
    ) -> Result<UserJson, RepoError> {
        let stamp = self.stamp();
        let user = self.repository.update(id, changes, precondition).await?;
        Ok(self.written(stamp, user).await)
    }

    pub async fn delete(&self, id: Uuid, precondition: Precondition) -> Result<(), RepoError> {
        self.repository.delete(id, precondition).await?;
        if let Some(cache) = &self.cache {
            cache.delete(id).await;
        }
        Ok(())
    }

    /// The generation to stamp a write's store with, taken before its commit.
    fn stamp(&self) -> Option<Stamp> {
        self.cache.as_ref().map(Cache::stamp)
    }

    async fn written(&self, stamp: Option<Stamp>, user: users::Model) -> UserJson {
        let store = self
            .cache
            .as_ref()
            .zip(stamp)
            .map(|to| (to, user.id, user.email.clone()));
        let json = UserJson::of(user);
        if let Some(((cache, stamp), id, email)) = store {
            cache.store(stamp, id, &json.entry(), &email).await;
        }
        json
    }
}

/// Whether a cached user has this email, compared as lookups compare (ASCII case folded:
/// stored addresses are ASCII).
fn has_email(entry: &Entry, email: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct EmailOf<'a> {
        #[serde(borrow)]
        email: Cow<'a, str>,
    }
    serde_json::from_slice::<EmailOf<'_>>(&entry.json)
        .is_ok_and(|user| user.email.eq_ignore_ascii_case(email))
}
