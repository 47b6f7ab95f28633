//! The users as the endpoints read and write them: the repository, with the cache (when
//! `REDIS_URL` is set) in front of reads by id and by email, and every committed write carried
//! to the cache before its response. The coherence rules are the cache wing's (cache/mod.rs).
//! The change feed reads the database alone, and its long polls wake at this instance's
//! writes.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::users;
use tokio::sync::Notify;
use uuid::Uuid;

use super::change_token::ChangeToken;
use super::idempotency::KeyClaim;
use super::repository::{
    ChangePage, ListQuery, NewUser, Page, Precondition, RepoError, UserChanges, UserRepository,
    Written,
};
use super::wire::User;
use crate::cache::{Cache, Entry, Read, Stamp};
use crate::db::{Freshness, Lsn};
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

/// A committed write's answer, and the primary's WAL position after its commit (its
/// `Consistency-Token`; `None` when there is no replica or it could not be read).
pub struct Committed<T> {
    pub value: T,
    pub position: Option<Lsn>,
}

#[derive(Clone)]
pub struct UserService {
    repository: UserRepository,
    cache: Option<Cache>,
    /// Woken at each write this instance commits, for the change feed's long polls.
    written: Arc<Notify>,
}

/// How often a change-feed long poll looks again for other instances' writes (this instance's
/// wake it at once).
const CHANGES_POLL: Duration = Duration::from_millis(250);

impl UserService {
    pub fn new(repository: UserRepository, cache: Option<Cache>) -> Self {
        Self {
            repository,
            cache,
            written: Arc::default(),
        }
    }

    /// A page of the change feed (never cached: it is read in commit order from the database);
    /// when it is empty, looked for again until a change arrives or `wait` has passed.
    pub async fn changes(
        &self,
        since: Option<ChangeToken>,
        limit: u64,
        wait: Duration,
        freshness: Freshness,
    ) -> Result<ChangePage, RepoError> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before the read, so a write committed meanwhile still wakes it.
            let written = self.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let page = self.repository.changes(since, limit, freshness).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !page.changes.is_empty() || left.is_zero() {
                return Ok(page);
            }
            let _ = tokio::time::timeout(left.min(CHANGES_POLL), written).await;
        }
    }

    pub async fn create(
        &self,
        new: NewUser,
        key: Option<&KeyClaim>,
    ) -> Result<Committed<(Uuid, UserJson)>, RepoError> {
        let stamp = self.stamp();
        let written = self.repository.create(new, key).await?;
        Ok(self.written(stamp, written).await)
    }

    /// A hit answers whatever `freshness` asks: the cache holds nothing older than an
    /// acknowledged write.
    pub async fn get(&self, id: Uuid, freshness: Freshness) -> Result<UserJson, RepoError> {
        let read = match &self.cache {
            Some(cache) => cache.get(id).await,
            None => Read::Unavailable,
        };
        self.read_through(read, freshness, |freshness| {
            self.repository.find_by_id(id, freshness)
        })
        .await
    }

    pub async fn lookup(&self, email: &str, freshness: Freshness) -> Result<UserJson, RepoError> {
        let read = match &self.cache {
            Some(cache) => cache.lookup(email, |entry| has_email(entry, email)).await,
            None => Read::Unavailable,
        };
        self.read_through(read, freshness, |freshness| {
            self.repository.find_by_email(email, freshness)
        })
        .await
    }

    /// A hit as it is; otherwise the database's answer, filled into the cache after a miss.
    /// What fills the cache is read on the primary: a replica's older version, stored, would
    /// be served until its entry expires, long after the replica caught up.
    async fn read_through<Fut>(
        &self,
        read: Read,
        freshness: Freshness,
        database: impl FnOnce(Freshness) -> Fut,
    ) -> Result<UserJson, RepoError>
    where
        Fut: Future<Output = Result<users::Model, RepoError>>,
    {
        let (stamp, freshness) = match read {
            Read::Hit(entry) => return Ok(UserJson::cached(entry)),
            Read::Miss(stamp) => (Some(stamp), Freshness::Latest),
            Read::Unavailable => (None, freshness),
        };
        let user = database(freshness).await?;
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
    pub async fn list(&self, query: ListQuery, freshness: Freshness) -> Result<Page, RepoError> {
        self.repository.list(query, freshness).await
    }

    pub async fn update(
        &self,
        id: Uuid,
        changes: UserChanges,
        precondition: Precondition,
        key: Option<&KeyClaim>,
    ) -> Result<Committed<UserJson>, RepoError> {
        let stamp = self.stamp();
        let written = self
            .repository
            .update(id, changes, precondition, key)
            .await?;
        let committed = self.written(stamp, written).await;
        Ok(Committed {
            value: committed.value.1,
            position: committed.position,
        })
    }

    pub async fn delete(
        &self,
        id: Uuid,
        precondition: Precondition,
    ) -> Result<Committed<()>, RepoError> {
        self.repository.delete(id, precondition).await?;
        self.written.notify_waiters();
        let forget = async {
            if let Some(cache) = &self.cache {
                cache.delete(id).await;
            }
        };
        let ((), position) = tokio::join!(forget, self.repository.committed_position());
        Ok(Committed {
            value: (),
            position,
        })
    }

    /// The generation to stamp a write's store with, taken before its commit.
    fn stamp(&self) -> Option<Stamp> {
        self.cache.as_ref().map(Cache::stamp)
    }

    /// A write's answer: its user's id and JSON, with the commit's position. A user written
    /// now is stored in the cache first and wakes the feed's long polls (the cache store and
    /// the position asked for together); a stored answer replayed changed nothing, and its
    /// position is the primary's now, past the first's commit.
    async fn written(&self, stamp: Option<Stamp>, written: Written) -> Committed<(Uuid, UserJson)> {
        let (user, fresh) = match written {
            Written::Fresh(user) => (user, true),
            Written::Replayed(user) => (user, false),
        };
        if fresh {
            self.written.notify_waiters();
        }
        let id = user.id;
        let store = self
            .cache
            .as_ref()
            .zip(stamp)
            .filter(|_| fresh)
            .map(|to| (to, user.email.clone()));
        let json = UserJson::of(user);
        let cached = async {
            if let Some(((cache, stamp), email)) = store {
                cache.store(stamp, id, &json.entry(), &email).await;
            }
        };
        let ((), position) = tokio::join!(cached, self.repository.committed_position());
        Committed {
            value: (id, json),
            position,
        }
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
