//! The cache wing: users by id and the email -> user mapping in Redis, kept coherent across
//! every api instance that shares the Redis. Nothing here knows what a user is beyond its id,
//! its version and its JSON.
//!
//! The rules (docs/cache.md has the promise they keep and its limits):
//! 1. A read trusts an entry only when it is stamped with the current generation; one `MGET`
//!    (or one script for a lookup) reads both.
//! 2. Every store, a fill after a miss or a write after its commit, is stamped with the
//!    generation its instance saw *before* the database read or the commit, and never lowers
//!    an entry's version (`store.lua`, atomic in Redis). A fill that read an old row cannot
//!    overwrite the write that followed it.
//! 3. A delete leaves a tombstone that no store overwrites while it lives (`CACHE_TTL_SECS`).
//! 4. A write whose store or tombstone could not be made (Redis slow, down, or this instance
//!    already bypassing it) leaves this instance owing a generation bump: until its bump has
//!    landed it answers every read from the database, and the bump orphans every entry
//!    stamped before it, stale or not.
//! 5. The cache never fails a request: a call slower than `CACHE_TIMEOUT_MS` or failing is
//!    abandoned, the database answers, and the instance stops asking Redis until a probe in the
//!    background succeeds (a bump, when one is owed).

mod availability;
mod entry;
pub mod keys;

use std::future::Future;
#[cfg(feature = "test-hooks")]
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg(feature = "test-hooks")]
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use observability::cache::{CacheResult, record};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisResult, Script};
use uuid::Uuid;

use availability::Availability;
pub use entry::Entry;

use strum::IntoEnumIterator;

use crate::config::{CacheConfig, ExposeSecret};

/// The cache calls, as `cache_requests_total{operation}` names them: an enum, as the
/// database's `Operation` is, so a name cannot be misspelt into a series never registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
pub enum Operation {
    #[strum(serialize = "user.get")]
    Get,
    #[strum(serialize = "user.lookup")]
    Lookup,
    #[strum(serialize = "user.fill")]
    Fill,
    #[strum(serialize = "user.store")]
    Store,
    #[strum(serialize = "user.delete")]
    Delete,
    #[strum(serialize = "generation.bump")]
    Bump,
    #[strum(serialize = "generation.get")]
    Probe,
    #[strum(serialize = "generation.init")]
    Init,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

const BUMP: &str = include_str!("bump.lua");

/// `store.lua` with the tombstone it must not overwrite, as [`entry::TOMBSTONE`] writes it.
fn store_script() -> String {
    format!(
        "local TOMBSTONE = '{}'\n{}",
        entry::TOMBSTONE,
        include_str!("store.lua")
    )
}

/// How often an instance that stopped using the cache tries it again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The generation an instance saw last: what its next store is stamped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

/// What a read found.
#[derive(Debug)]
pub enum Read {
    Hit(Entry),
    /// Not cached, or not current: read the database, then [`Cache::fill`] with this stamp.
    Miss(Stamp),
    /// The cache was not asked or did not answer: read the database, do not fill.
    Unavailable,
}

/// A test hook, run between a fill's database read and its store (feature `test-hooks`: the
/// tests' build only).
#[cfg(feature = "test-hooks")]
pub type FillHook = dyn Fn(Uuid) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// The cache client of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

struct Inner {
    redis: ConnectionManager,
    ttl_secs: u64,
    timeout: Duration,
    availability: Availability,
    /// The generation this instance saw last (0: none yet, which no entry is stamped with).
    generation: AtomicU64,
    store: Script,
    lookup: Script,
    #[cfg(feature = "test-hooks")]
    fill_hook: ArcSwapOption<Box<FillHook>>,
}

impl Cache {
    /// A client for `config.url`. Connects lazily: a Redis that is down at start-up only means
    /// bypassed reads until it is up.
    pub fn new(config: &CacheConfig) -> RedisResult<Self> {
        let url = config.url.expose_secret();
        let client = match &config.ca_file {
            None => redis::Client::open(url)?,
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|error| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "REDIS_CA_FILE",
                        format!("{}: {error}", path.display()),
                    ))
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )?
            }
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let redis = ConnectionManager::new_lazy_with_config(client, manager)?;
        let names: Vec<&'static str> = Operation::iter().map(Operation::as_str).collect();
        observability::cache::register_operations(&names);
        Ok(Self(Arc::new(Inner {
            redis,
            ttl_secs: config.ttl.as_secs(),
            timeout: config.timeout,
            availability: Availability::default(),
            generation: AtomicU64::new(0),
            store: Script::new(&store_script()),
            lookup: Script::new(include_str!("lookup.lua")),
            #[cfg(feature = "test-hooks")]
            fill_hook: ArcSwapOption::empty(),
        })))
    }

    /// Makes the first connection, so the first requests do not pay for it, and learns the
    /// generation (starting one on a new Redis), so the first writes' stores are readable. A
    /// failure only means bypassed reads until a probe succeeds: the cache is optional.
    pub async fn warm_up(&self) {
        self.start_generation().await;
        if !self.housekeeping(Operation::Probe, self.probe()).await {
            self.failed(false);
        }
    }

    /// Starts a generation where there is none (a new or flushed Redis) at a random value, so
    /// that no store stamped before a flush can match it.
    async fn start_generation(&self) {
        let mut redis = self.0.redis.clone();
        let init = self.housekeeping(
            Operation::Init,
            redis.set_options::<_, _, ()>(
                keys::GENERATION,
                random_generation(),
                redis::SetOptions::default().conditional_set(redis::ExistenceCheck::NX),
            ),
        );
        if !init.await {
            self.failed(false);
        }
    }

    /// The generation to stamp a write's store with: take it before the write's commit.
    pub fn stamp(&self) -> Stamp {
        Stamp(self.0.generation.load(Ordering::Relaxed))
    }

    /// The user with this id.
    pub async fn get(&self, id: Uuid) -> Read {
        if !self.0.availability.usable() {
            record(Operation::Get.as_str(), CacheResult::Bypass, None);
            return Read::Unavailable;
        }
        let mut redis = self.0.redis.clone();
        let keys = [keys::GENERATION.to_owned(), keys::user(id)];
        let read = self.call(
            Operation::Get,
            redis.mget::<_, (Option<Bytes>, Option<Bytes>)>(&keys),
        );
        match read.await {
            Ok(((generation, value), elapsed)) => {
                self.read(Operation::Get, generation, value, elapsed, |_| true)
                    .await
            }
            Err(()) => {
                self.failed(false);
                Read::Unavailable
            }
        }
    }

    /// The user an email points to, when `owns` agrees that the entry has that email (an
    /// email's pointer may be older than the user's last change of address).
    pub async fn lookup(&self, email: &str, owns: impl Fn(&Entry) -> bool) -> Read {
        let Some(email_key) = keys::email(email) else {
            return Read::Unavailable;
        };
        if !self.0.availability.usable() {
            record(Operation::Lookup.as_str(), CacheResult::Bypass, None);
            return Read::Unavailable;
        }
        let mut redis = self.0.redis.clone();
        let mut invocation = self.0.lookup.prepare_invoke();
        invocation
            .key(keys::GENERATION)
            .key(email_key)
            .arg(keys::USER_PREFIX);
        let read = self.call(
            Operation::Lookup,
            invocation.invoke_async::<(Option<Bytes>, Option<Bytes>)>(&mut redis),
        );
        match read.await {
            Ok(((generation, value), elapsed)) => {
                self.read(Operation::Lookup, generation, value, elapsed, owns)
                    .await
            }
            Err(()) => {
                self.failed(false);
                Read::Unavailable
            }
        }
    }

    async fn read(
        &self,
        operation: Operation,
        generation: Option<Bytes>,
        value: Option<Bytes>,
        elapsed: Duration,
        accept: impl Fn(&Entry) -> bool,
    ) -> Read {
        let stamp = generation
            .as_deref()
            .and_then(|generation| std::str::from_utf8(generation).ok()?.parse().ok());
        let Some(stamp) = stamp else {
            // A flushed (or new) Redis: start a generation; fills resume from the next read.
            record(operation.as_str(), CacheResult::Miss, Some(elapsed));
            self.start_generation().await;
            return Read::Unavailable;
        };
        self.0.generation.store(stamp, Ordering::Relaxed);
        let generation = generation.unwrap_or_default();
        match value.and_then(|value| entry::current(value, &generation)) {
            Some(entry) if accept(&entry) => {
                record(operation.as_str(), CacheResult::Hit, Some(elapsed));
                Read::Hit(entry)
            }
            _ => {
                record(operation.as_str(), CacheResult::Miss, Some(elapsed));
                Read::Miss(Stamp(stamp))
            }
        }
    }

    /// After a miss: stores what the database answered, unless the cache holds something at
    /// least as new by then. `email` also points that address at the user.
    pub async fn fill(&self, stamp: Stamp, id: Uuid, entry: &Entry, email: Option<&str>) {
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = self.0.fill_hook.load_full() {
            hook(id).await;
        }
        // A fill that is not made leaves nothing stale behind: no bump owed.
        self.put(Operation::Fill, stamp, id, entry, email, false)
            .await;
    }

    /// After a write's commit, before its response: the user as written, with the stamp taken
    /// before the commit.
    pub async fn store(&self, stamp: Stamp, id: Uuid, entry: &Entry, email: &str) {
        self.put(Operation::Store, stamp, id, entry, Some(email), true)
            .await;
    }

    async fn put(
        &self,
        operation: Operation,
        stamp: Stamp,
        id: Uuid,
        entry: &Entry,
        email: Option<&str>,
        owes_bump_if_lost: bool,
    ) {
        if !self.0.availability.usable() {
            record(operation.as_str(), CacheResult::Bypass, None);
            if owes_bump_if_lost {
                self.lost_write().await;
            }
            return;
        }
        let mut invocation = self.0.store.prepare_invoke();
        invocation.key(keys::user(id)).key(keys::GENERATION);
        if let Some(email_key) = email.and_then(keys::email) {
            invocation.key(email_key);
        }
        invocation
            .arg(stamp.0)
            .arg(entry.version)
            .arg(entry.json.as_ref())
            .arg(self.0.ttl_secs)
            .arg(keys::user_suffix(id));
        let mut redis = self.0.redis.clone();
        let stored = self.call(operation, invocation.invoke_async::<i64>(&mut redis));
        match stored.await {
            Ok((_, elapsed)) => record(operation.as_str(), CacheResult::Ok, Some(elapsed)),
            Err(()) if owes_bump_if_lost => self.lost_write().await,
            Err(()) => self.failed(false),
        }
    }

    /// After a delete's commit, before its response: a tombstone no racing fill can replace.
    pub async fn delete(&self, id: Uuid) {
        if !self.0.availability.usable() {
            record(Operation::Delete.as_str(), CacheResult::Bypass, None);
            self.lost_write().await;
            return;
        }
        let mut redis = self.0.redis.clone();
        let tombstone = self.call(
            Operation::Delete,
            redis.set_ex::<_, _, ()>(keys::user(id), entry::TOMBSTONE, self.0.ttl_secs),
        );
        match tombstone.await {
            Ok((_, elapsed)) => record(Operation::Delete.as_str(), CacheResult::Ok, Some(elapsed)),
            Err(()) => self.lost_write().await,
        }
    }

    /// A committed write the cache did not take: this instance stops trusting the cache until a
    /// bump has landed, and sends one now, before the write's response. On a Redis that is
    /// paused or slow the bump then waits in the connection ahead of any read sent after the
    /// response; the recovery loop repeats it until one is answered.
    async fn lost_write(&self) {
        self.failed(true);
        self.housekeeping(Operation::Bump, self.bump()).await;
    }

    /// Runs a call that reads no user (a probe, a bump, a new generation) and counts it; true
    /// when it succeeded.
    fn housekeeping<'a>(
        &'a self,
        operation: Operation,
        future: impl Future<Output = RedisResult<()>> + Send + 'a,
    ) -> impl Future<Output = bool> + Send + 'a {
        let call = self.call(operation, future);
        async move {
            match call.await {
                Ok(((), elapsed)) => {
                    record(operation.as_str(), CacheResult::Ok, Some(elapsed));
                    true
                }
                Err(()) => false,
            }
        }
    }

    /// Runs `future` within `CACHE_TIMEOUT_MS`; a failure is counted as an error. Not `async`:
    /// the client's future goes to the heap here, before any caller's state machine holds it,
    /// as the database's do (db/observe.rs), so the handlers' futures stay as small as without a
    /// cache (`UserService::get`: 1.5 KB). Build `future` in the argument, not in a local that
    /// lives across the await.
    fn call<'a, T: 'a>(
        &'a self,
        operation: Operation,
        future: impl Future<Output = RedisResult<T>> + Send + 'a,
    ) -> impl Future<Output = Result<(T, Duration), ()>> + Send + 'a {
        let started = Instant::now();
        let future = Box::pin(tokio::time::timeout(self.0.timeout, future));
        async move {
            let outcome = future.await;
            let elapsed = started.elapsed();
            match outcome {
                Ok(Ok(value)) => Ok((value, elapsed)),
                Ok(Err(error)) => {
                    tracing::debug!(operation = operation.as_str(), %error, "cache call failed");
                    record(operation.as_str(), CacheResult::Error, Some(elapsed));
                    Err(())
                }
                Err(_) => {
                    tracing::debug!(operation = operation.as_str(), "cache call timed out");
                    record(operation.as_str(), CacheResult::Error, Some(elapsed));
                    Err(())
                }
            }
        }
    }

    /// Stops using the cache until a probe succeeds; with `owes_bump`, until a bump has landed.
    fn failed(&self, owes_bump: bool) {
        if self.0.availability.fail(owes_bump) {
            tracing::warn!(
                "cache unavailable or slower than CACHE_TIMEOUT_MS: reads go to the database \
                 until it answers again"
            );
            tokio::spawn(recover(Arc::downgrade(&self.0)));
        }
    }

    async fn probe(&self) -> RedisResult<()> {
        let mut redis = self.0.redis.clone();
        let generation: Option<u64> = redis.get(keys::GENERATION).await?;
        if let Some(generation) = generation {
            self.0.generation.store(generation, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn bump(&self) -> RedisResult<()> {
        let mut redis = self.0.redis.clone();
        // EVAL, not EVALSHA: a bump sent to a paused Redis must run when it resumes, even if
        // that Redis never saw the script (an EVALSHA would get NOSCRIPT after its caller had
        // stopped waiting to load the script and retry).
        let generation: u64 = redis::cmd("EVAL")
            .arg(BUMP)
            .arg(1)
            .arg(keys::GENERATION)
            .arg(random_generation())
            .query_async(&mut redis)
            .await?;
        self.0.generation.store(generation, Ordering::Relaxed);
        Ok(())
    }

    /// Whether this instance answers reads from the cache now (false while it recovers).
    #[cfg(feature = "test-hooks")]
    pub fn in_use(&self) -> bool {
        self.0.availability.usable()
    }

    /// Runs `hook` in every fill between the database read and the store.
    #[cfg(feature = "test-hooks")]
    pub fn set_fill_hook(&self, hook: Option<Box<FillHook>>) {
        self.0.fill_hook.store(hook.map(Arc::new));
    }
}

/// Probes until the cache answers (bumping the generation when a lost write owes it), then
/// puts the instance back on the cache. Ends early when the app is dropped.
async fn recover(inner: std::sync::Weak<Inner>) {
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
        first = false;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let cache = Cache(inner);
        let state = cache.0.availability.state();
        let probed = if state.owes_bump() {
            cache.housekeeping(Operation::Bump, cache.bump()).await
        } else {
            cache.housekeeping(Operation::Probe, cache.probe()).await
        };
        if probed && cache.0.availability.recovered(state) {
            tracing::info!("cache answering again: reads use it");
            return;
        }
    }
}

/// A random start for a generation: far from any earlier one, below 2^52 (Lua's numbers).
fn random_generation() -> u64 {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (1 << 40) + seed % (1 << 51)
}
