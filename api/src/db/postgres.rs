//! PostgreSQL's data path: a few shared connections, each carrying many requests' statements
//! at once (pipelining: tokio-postgres writes every queued statement in one syscall and reads
//! their results in one, and PostgreSQL wakes once for many). A pool that lends a connection to
//! one request at a time pays a round trip, a wake-up and a context switch per statement on
//! each side; on the 2-core reference machine that capped the service at a third of what
//! PostgreSQL serves (docs/architecture.md, bench/RESULTS.md).
//!
//! A pipeline runs its statements in order, so whatever is queued behind a slow statement waits
//! as long as it does. Three rules keep one slow statement from delaying anyone who does not
//! need the same thing:
//! - **Lanes.** Point reads (one row by key), scans (lists and name searches) and writes each
//!   have connections of their own ([`Lane`]): a search never runs ahead of a GET by id, and a
//!   write waiting for a row lock or its commit's WAL flush never holds up a read.
//! - **No statement behind a stalled one.** A pipeline that has answered nothing for
//!   [`STALL_AFTER`] while carrying statements (a lock, a slow plan, a server that stopped
//!   answering) takes no new ones: they go to another connection of the lane, one is opened
//!   (up to the lane's share of `DB_MAX_CONNECTIONS`), or they wait here, client-side, where
//!   the acquire timeout can still fail them.
//! - **Bounded waits.** A statement waits at most `DB_ACQUIRE_TIMEOUT_SECS` to be sent and
//!   [`PoolConfig::answer_within`] for its answer (enforced here, not only by the server's
//!   `statement_timeout`: a server that stopped answering enforces nothing). A connection that
//!   misses that bound is cancelled and closed, failing what it still carries at once, and the
//!   next statements open a new one.
//!
//! The other `DB_*` settings keep their meaning: `DB_MIN_CONNECTIONS` connections are kept open
//! (`DB_READ_CONNECTIONS` of them for point reads, one for scans, the rest for writes),
//! `DB_TEST_BEFORE_ACQUIRE` pings a connection idle for `DB_TEST_IDLE_SECS`, and connections past
//! `DB_MAX_LIFETIME_SECS` (less a random part of a tenth, so connections opened together are
//! not all replaced together), or idle past `DB_IDLE_TIMEOUT_SECS` beyond the
//! minimum, are closed by the housekeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use observability::db::PoolState;
use sea_orm::sea_query::Value;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row, Statement};

use super::ErrorKind;
use super::observe::{Failure, sqlstate_kind};
use super::server::{ConnectError, PgServer, with_causes};
use crate::config::{HealthCheck, PoolConfig};

/// Statements one connection carries at once; more wait (up to the acquire timeout) for a
/// place, so an overloaded database answers 503 instead of queueing without bound. Deep enough
/// for 256 client connections' reads on the one read connection: at 64, reads past it spilled
/// onto the write connections and 256 clients got 0.74x of what 64 did (bench/history).
pub const PIPELINE_DEPTH: usize = 256;

/// A pipeline that has answered nothing for this long while it carries statements is stalled.
/// A loaded pipeline answers every few microseconds, so only a blocked or slow head statement
/// goes this long without an answer; what arrives meanwhile goes elsewhere.
pub const STALL_AFTER: Duration = Duration::from_millis(10);

/// A failed call: the driver's error, or no connection within the acquire timeout.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{}", with_causes(.0))]
    Driver(#[from] tokio_postgres::Error),
    /// No connection could be opened: names the server and the cause.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("no database connection within the acquire timeout")]
    AcquireTimeout,
    /// The statement was sent and nothing came back in time (the server stopped with the
    /// connection open, or the network drops packets).
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

impl PgError {
    pub fn kind(&self) -> ErrorKind {
        let error = match self {
            PgError::AcquireTimeout => return ErrorKind::PoolTimeout,
            PgError::NoAnswer(_) => return ErrorKind::Timeout,
            PgError::Driver(error) => error,
            PgError::Connect(error) => error.driver(),
        };
        if error.is_closed() {
            return ErrorKind::Connection;
        }
        match error.code().map(|code| code.code()) {
            Some(code) => sqlstate_kind(code),
            // No SQLSTATE: the socket failed, or a row did not decode.
            None if std::error::Error::source(error)
                .is_some_and(|source| source.is::<std::io::Error>()) =>
            {
                ErrorKind::Connection
            }
            None => ErrorKind::Other,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Driver(error) => error.code().map(|code| code.code()),
            PgError::Connect(error) => error.driver().code().map(|code| code.code()),
            PgError::AcquireTimeout | PgError::NoAnswer(_) => None,
        }
    }
}

/// What a statement does, for the choice of connection: each lane has connections of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// One row by key (get, lookup, a version, a WAL position): sub-millisecond, and never
    /// waiting for a lock.
    Point = 0,
    /// Many rows (lists, name searches): slower, so never ahead of a point read.
    Scan = 1,
    /// Writes: they may wait for a row lock and each waits for its commit's WAL flush.
    Write = 2,
}

const LANES: [Lane; 3] = [Lane::Point, Lane::Scan, Lane::Write];

/// How `DB_MAX_CONNECTIONS` and `DB_MIN_CONNECTIONS` divide among the lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lanes {
    /// The lane whose connections a lane uses: its own, but with one connection every lane
    /// shares it, and with two, scans share the point reads'.
    uses: [Lane; 3],
    /// Connections a lane may hold at most: scans a quarter of the ceiling (a flood of
    /// searches waits for searches, not for every connection), writes all but what keeps one
    /// for each read lane, point reads whatever is free.
    most: [usize; 3],
    /// Connections kept open: `DB_READ_CONNECTIONS` for point reads, one for scans, the rest
    /// of `DB_MIN_CONNECTIONS` for writes.
    warm: [usize; 3],
}

impl Lanes {
    fn new(pool: &PoolConfig) -> Self {
        let max = pool.max_connections.max(1) as usize;
        let min = (pool.min_connections as usize).min(max);
        let (uses, most) = match max {
            1 => ([Lane::Point; 3], [1, 0, 0]),
            2 => ([Lane::Point, Lane::Point, Lane::Write], [1, 0, 1]),
            _ => (LANES, [max, (max / 4).max(1), max - 2]),
        };
        let mut warm = [0; 3];
        let mut left = min;
        for (lane, wanted) in [
            (Lane::Point, pool.read_connections as usize),
            (Lane::Scan, 1),
            (Lane::Write, usize::MAX),
        ] {
            let lane = lane as usize;
            if uses[lane] as usize == lane {
                warm[lane] = wanted.min(left).min(most[lane]);
                left -= warm[lane];
            }
        }
        // Anything left (a minimum above what the lanes may hold) stays with point reads.
        warm[Lane::Point as usize] += left;
        Self { uses, most, warm }
    }

    fn uses(&self, lane: Lane) -> Lane {
        self.uses[lane as usize]
    }
}

/// One open connection and what it has prepared.
struct Connection {
    client: Client,
    lane: Lane,
    statements: RwLock<HashMap<String, Statement>>,
    pipeline: Arc<Semaphore>,
    opened: Instant,
    /// How long it may live: `DB_MAX_LIFETIME_SECS`, less its slot's share of a tenth.
    lifetime: Option<Duration>,
    /// Milliseconds since `opened` of the last statement sent, for idle checks.
    last_used_ms: AtomicU64,
    /// Statements sent and not yet answered (or given up on).
    outstanding: AtomicUsize,
    /// Milliseconds since `opened` of the last answer, or of the statement sent to an empty
    /// pipeline: how long the head statement has been waiting.
    progress_ms: AtomicU64,
    /// The task that reads and writes the socket: aborting it closes the connection at once,
    /// even with statements in flight that will never be answered.
    driver: AbortHandle,
}

impl Connection {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// A statement is sent: until the guard goes (answered, failed, or its caller gone), it
    /// counts as outstanding.
    fn send(&self) -> Sent<'_> {
        let now = self.now_ms();
        self.last_used_ms.store(now, Ordering::Relaxed);
        if self.outstanding.fetch_add(1, Ordering::AcqRel) == 0 {
            self.progress_ms.store(now, Ordering::Relaxed);
        }
        Sent(self)
    }

    /// Statements sent and not yet answered.
    fn in_flight(&self) -> usize {
        PIPELINE_DEPTH - self.pipeline.available_permits()
    }

    fn busy(&self) -> bool {
        self.in_flight() > 0
    }

    /// Carrying statements and answering none: the head one waits for something.
    fn stalled(&self) -> bool {
        self.outstanding.load(Ordering::Acquire) > 0
            && self
                .now_ms()
                .saturating_sub(self.progress_ms.load(Ordering::Relaxed))
                >= STALL_AFTER.as_millis() as u64
    }

    fn expired(&self) -> bool {
        self.lifetime
            .is_some_and(|lifetime| self.opened.elapsed() >= lifetime)
    }

    /// The prepared statement for `sql`, prepared on first use.
    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.read().expect("not poisoned").get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements
            .write()
            .expect("not poisoned")
            .insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

/// A statement in flight on a connection. Its answer is progress; a caller that gave up (timed
/// out, or its request dropped) is not, as what it sent still runs ahead of what follows.
struct Sent<'a>(&'a Connection);

impl Sent<'_> {
    fn answered(self) {
        self.0.progress_ms.store(self.0.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One place for a connection: empty until opened, emptied when it breaks or is recycled.
#[derive(Default)]
struct Slot {
    current: ArcSwapOption<Connection>,
    /// Taken while a connection opens in it, so two lanes never open into one slot.
    reserved: AtomicBool,
}

impl Slot {
    /// The slot's connection, unless it is empty or the server closed it.
    fn connection(&self) -> Option<Arc<Connection>> {
        self.current
            .load_full()
            .filter(|connection| !connection.client.is_closed())
    }

    /// The slot, if it is empty and nobody is opening a connection in it.
    fn reserve(&self) -> Option<Reserved<'_>> {
        if self.connection().is_some() {
            return None;
        }
        self.reserved
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Reserved(self))
    }
}

/// An empty slot a connection is opening in; free again when this goes.
struct Reserved<'a>(&'a Slot);

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.0.reserved.store(false, Ordering::Release);
    }
}

pub struct Pipelines {
    slots: Box<[Slot]>,
    lanes: Lanes,
    /// Held while a lane opens a connection, so a burst that finds every pipeline stalled
    /// opens one, not one each.
    opening: [Mutex<()>; 3],
    /// Round-robin position among equally loaded connections.
    next: AtomicUsize,
    /// How many of the first slots have ever held a connection: connections open in the first
    /// empty slot, so the others need no look.
    used: AtomicUsize,
    /// Woken when a statement is answered or a connection opens or goes, for statements
    /// waiting for a place; `waiting` counts them, so nothing is woken when none wait.
    changed: Notify,
    waiting: AtomicUsize,
    server: PgServer,
    pool: PoolConfig,
    answer_within: Duration,
    callback: ArcSwapOption<Box<MetricCallback>>,
}

/// What ran, for a metric callback (as SeaORM's `set_metric_callback` reports it).
pub struct StatementInfo<'a> {
    pub sql: &'a str,
    /// The values and whether it was prepared (named, planned once) or unnamed (planned with
    /// its values): for the tests that EXPLAIN what ran (feature `test-hooks`); the service's
    /// own callback, the slow-statement log, never logs values.
    #[cfg(feature = "test-hooks")]
    pub values: &'a [Value],
    #[cfg(feature = "test-hooks")]
    pub prepared: bool,
    pub elapsed: Duration,
    pub failed: bool,
}

pub type MetricCallback = dyn Fn(&StatementInfo<'_>) + Send + Sync;

/// A connection lent for one statement: a place in its pipeline.
struct Lease<'a> {
    slot: &'a Slot,
    connection: Arc<Connection>,
    _place: OwnedSemaphorePermit,
}

impl Pipelines {
    /// Opens the warm connections (`DB_MIN_CONNECTIONS`) to `server`.
    pub async fn connect(server: PgServer, pool: &PoolConfig) -> Result<Self, PgError> {
        let pipelines = Self::new(server, pool);
        pipelines.open_warm().await?;
        Ok(pipelines)
    }

    /// Connections to `server` open on first use (and the housekeeping keeps the warm ones
    /// open).
    pub fn new(server: PgServer, pool: &PoolConfig) -> Self {
        let server = server
            .statement_timeout(pool.statement_timeout)
            .connect_timeout(pool.acquire_timeout);
        let slots = (0..pool.max_connections).map(|_| Slot::default()).collect();
        Self {
            slots,
            lanes: Lanes::new(pool),
            opening: Default::default(),
            next: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            changed: Notify::new(),
            waiting: AtomicUsize::new(0),
            server,
            answer_within: pool.answer_within(),
            pool: pool.clone(),
            callback: ArcSwapOption::empty(),
        }
    }

    /// The server's `host:port`, for messages.
    pub fn endpoint(&self) -> &str {
        self.server.endpoint()
    }

    /// Called after every statement (the slow-statement log; tests record what runs).
    pub fn set_metric_callback(
        &self,
        callback: impl Fn(&StatementInfo<'_>) + Send + Sync + 'static,
    ) {
        self.callback.store(Some(Arc::new(Box::new(callback))));
    }

    /// Runs a statement prepared once per connection (unnamed with `DB_PREPARED_STATEMENTS`
    /// off).
    pub async fn query(
        &self,
        lane: Lane,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<Row>, PgError> {
        if !self.pool.prepared_statements {
            return self.query_unprepared(lane, sql, values).await;
        }
        let params = Params::new(values);
        self.run(lane, sql, values, true, |connection| async move {
            let statement = connection.statement(sql).await?;
            connection.client.query(&statement, &params.refs()).await
        })
        .await
    }

    /// Runs a statement unnamed, planned anew with its parameters each time (one round trip:
    /// parse, bind and execute go together).
    pub async fn query_unprepared(
        &self,
        lane: Lane,
        sql: &str,
        values: &[Value],
    ) -> Result<Vec<Row>, PgError> {
        let params = Params::new(values);
        self.run(lane, sql, values, false, |connection| async move {
            connection.client.query_typed(sql, &params.typed()).await
        })
        .await
    }

    /// Runs a statement that returns no rows (prepared once per connection, unnamed with
    /// `DB_PREPARED_STATEMENTS` off); the number of rows it touched.
    pub async fn execute(&self, lane: Lane, sql: &str, values: &[Value]) -> Result<u64, PgError> {
        let params = Params::new(values);
        let prepared = self.pool.prepared_statements;
        self.run(lane, sql, values, prepared, |connection| async move {
            if !prepared {
                return connection.client.execute_typed(sql, &params.typed()).await;
            }
            let statement = connection.statement(sql).await?;
            connection.client.execute(&statement, &params.refs()).await
        })
        .await
    }

    /// A round trip on a point-read connection.
    pub async fn ping(&self) -> Result<(), PgError> {
        self.run(Lane::Point, "", &[], false, |connection| async move {
            connection.client.simple_query("").await.map(drop)
        })
        .await
    }

    /// Runs `call`, the statement `sql` with `values`, on a leased connection: at most the
    /// acquire timeout to get a place, at most `answer_within` for the answer. (`values` and
    /// `prepared` only go to the tests' callback.)
    #[cfg_attr(not(feature = "test-hooks"), expect(unused_variables))]
    async fn run<T, F, Fut>(
        &self,
        lane: Lane,
        sql: &str,
        values: &[Value],
        prepared: bool,
        call: F,
    ) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let lease = tokio::time::timeout(self.pool.acquire_timeout, self.lease(lane))
            .await
            .map_err(|_| PgError::AcquireTimeout)??;
        let connection = Arc::clone(&lease.connection);
        let sent = connection.send();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.answer_within, call(Arc::clone(&connection))).await;
        let result = match answer {
            Ok(result) => {
                sent.answered();
                result.map_err(PgError::from)
            }
            Err(_) => {
                self.abandon(lease.slot, &connection);
                Err(PgError::NoAnswer(self.answer_within))
            }
        };
        if let Some(callback) = &*self.callback.load() {
            callback(&StatementInfo {
                sql,
                #[cfg(feature = "test-hooks")]
                values,
                #[cfg(feature = "test-hooks")]
                prepared,
                elapsed: started.elapsed(),
                failed: result.is_err(),
            });
        }
        if let Err(PgError::Driver(error)) = &result
            && error.is_closed()
        {
            // Broken: the next statement of its lane opens a new connection.
            self.empty(lease.slot, &connection);
        }
        drop(lease);
        self.wake();
        result
    }

    /// A place in a pipeline of the lane: the least loaded of its connections that are not
    /// stalled; else a new connection (within the lane's share); else, client-side, a wait for
    /// one of those to change. Bounded by the caller's acquire timeout.
    async fn lease(&self, lane: Lane) -> Result<Lease<'_>, PgError> {
        let lane = self.lanes.uses(lane);
        loop {
            if let Some(lease) = self.place_in(lane) {
                match self.checked(lease).await {
                    Some(lease) => return Ok(lease),
                    None => continue,
                }
            }
            if let Some((reserved, _opening)) = self.room_for(lane) {
                let slot = self.open(reserved, lane).await?;
                if let Some(lease) = self.place_on(slot) {
                    return Ok(lease);
                }
                continue;
            }
            self.changed().await;
        }
    }

    /// Waits until a statement is answered or a connection opens or goes, or [`STALL_AFTER`]
    /// passes (a pipeline may have become stalled meanwhile, and a wake-up may have come
    /// between the caller's look and this wait).
    async fn changed(&self) {
        let changed = self.changed.notified();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _ = tokio::time::timeout(STALL_AFTER, changed).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.changed.notify_waiters();
        }
    }

    /// The least loaded open connection of `lane` that is not stalled and has room, ties going
    /// round robin. One pass over the slots, on every statement: it borrows each slot's
    /// connection without counting a reference, and keeps only the best.
    fn place_in(&self, lane: Lane) -> Option<Lease<'_>> {
        let count = self.used.load(Ordering::Acquire).clamp(1, self.slots.len());
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut best: Option<(&Slot, usize)> = None;
        for i in 0..count {
            let slot = &self.slots[(start + i) % count];
            let current = slot.current.load();
            let Some(connection) = current.as_ref() else {
                continue;
            };
            if connection.lane != lane || connection.client.is_closed() || connection.stalled() {
                continue;
            }
            let load = connection.in_flight();
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((slot, load));
                if load == 0 {
                    break;
                }
            }
        }
        let (slot, _) = best?;
        self.place_on(slot)
    }

    /// A place on `slot`'s connection, if its pipeline has room.
    fn place_on<'a>(&self, slot: &'a Slot) -> Option<Lease<'a>> {
        let connection = slot.connection()?;
        let place = Arc::clone(&connection.pipeline).try_acquire_owned().ok()?;
        Some(Lease {
            slot,
            connection,
            _place: place,
        })
    }

    /// An empty slot the lane may open a connection in, with the lane's opening lock; `None`
    /// when the lane holds its share, when the last free slots are kept for lanes that have no
    /// connection (point reads always get one, however many writes a lock holds), or when
    /// another statement is opening one for the lane (it will have room for this one too).
    fn room_for(&self, lane: Lane) -> Option<(Reserved<'_>, tokio::sync::MutexGuard<'_, ()>)> {
        let opening = self.opening[lane as usize].try_lock().ok()?;
        let open = self.open_per_lane();
        if open[lane as usize] >= self.lanes.most[lane as usize] {
            return None;
        }
        let free = self.slots.len() - open.iter().sum::<usize>();
        let kept = LANES
            .iter()
            .filter(|&&other| other != lane && self.lanes.uses(other) == other)
            .filter(|&&other| open[other as usize] == 0)
            .count();
        if free <= kept {
            return None;
        }
        let slot = self.slots.iter().find_map(Slot::reserve)?;
        Some((slot, opening))
    }

    /// How many connections each lane has open.
    fn open_per_lane(&self) -> [usize; 3] {
        let mut open = [0; 3];
        for connection in self.slots.iter().filter_map(Slot::connection) {
            open[connection.lane as usize] += 1;
        }
        open
    }

    /// `DB_TEST_BEFORE_ACQUIRE`: pings a connection before use when asked to; a failed ping
    /// empties its slot, and `None` sends the lease to look again.
    async fn checked<'a>(&self, lease: Lease<'a>) -> Option<Lease<'a>> {
        let ping = match self.pool.health_check {
            HealthCheck::Always => true,
            HealthCheck::IfIdleFor(idle) => lease.connection.idle_for() >= idle,
            HealthCheck::Never => false,
        };
        if !ping || lease.connection.client.simple_query("").await.is_ok() {
            return Some(lease);
        }
        self.empty(lease.slot, &lease.connection);
        None
    }

    /// Opens a connection for `lane` in the reserved slot.
    async fn open<'a>(&self, reserved: Reserved<'a>, lane: Lane) -> Result<&'a Slot, PgError> {
        let slot = reserved.0;
        let (client, driver) = self.server.connect().await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!(%error, "database connection closed");
            }
        })
        .abort_handle();
        let index = self
            .slots
            .iter()
            .position(|other| std::ptr::eq(other, slot))
            .unwrap_or_default();
        let connection = Arc::new(Connection {
            client,
            lane,
            statements: RwLock::default(),
            pipeline: Arc::new(Semaphore::new(PIPELINE_DEPTH)),
            opened: Instant::now(),
            lifetime: self
                .pool
                .max_lifetime
                .map(|lifetime| spread(lifetime, index)),
            last_used_ms: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
            driver,
        });
        slot.current.store(Some(connection));
        self.used.fetch_max(index + 1, Ordering::AcqRel);
        self.wake();
        Ok(slot)
    }

    /// Empties `slot` if it still holds `connection`: the next statement opens another.
    /// Statements in flight on it finish first (the client lives until they do).
    fn empty(&self, slot: &Slot, connection: &Arc<Connection>) {
        slot.current
            .compare_and_swap(&Some(Arc::clone(connection)), None);
        self.wake();
    }

    /// A connection missed the answer bound: the server stopped answering, or the network
    /// drops packets. It is closed at once (what it still carries fails now, not each at its
    /// own bound), and what runs on its backend is cancelled, so a blocked statement stops
    /// holding its locks and its snapshot.
    fn abandon(&self, slot: &Slot, connection: &Arc<Connection>) {
        if slot
            .current
            .load()
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, connection))
        {
            tracing::warn!(
                within_ms = self.answer_within.as_millis() as u64,
                "a database connection did not answer in time: closed, the next statement opens another"
            );
        }
        self.empty(slot, connection);
        connection.driver.abort();
        let cancel = connection.client.cancel_token();
        let within = self.pool.acquire_timeout;
        let server = self.server.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(within, server.cancel(cancel)).await;
        });
    }

    /// Opens each lane's warm connections that are not open.
    async fn open_warm(&self) -> Result<(), PgError> {
        let open = self.open_per_lane();
        for lane in LANES {
            let missing = self.lanes.warm[lane as usize].saturating_sub(open[lane as usize]);
            for _ in 0..missing {
                let Some((reserved, _opening)) = self.room_for(lane) else {
                    break;
                };
                self.open(reserved, lane).await?;
            }
        }
        Ok(())
    }

    /// Closes connections past their lifetime, and those idle past `DB_IDLE_TIMEOUT_SECS`
    /// beyond their lane's warm ones; reopens the warm ones. Statements in flight on a closed
    /// connection finish first (the client lives until they do).
    pub async fn housekeeping(&self) {
        let mut open = [0; 3];
        for slot in self.slots.iter() {
            let Some(connection) = slot.current.load_full() else {
                continue;
            };
            let lane = connection.lane as usize;
            let idle = open[lane] >= self.lanes.warm[lane]
                && !connection.busy()
                && self
                    .pool
                    .idle_timeout
                    .is_some_and(|timeout| connection.idle_for() >= timeout);
            if connection.expired() || idle || connection.client.is_closed() {
                self.empty(slot, &connection);
            } else {
                open[lane] += 1;
            }
        }
        if let Err(error) = self.open_warm().await {
            tracing::debug!(%error, "could not reopen a warm database connection");
        }
    }

    /// The pool gauges: a connection is active while it carries a statement.
    pub fn state(&self) -> PoolState {
        let (mut active, mut idle) = (0, 0);
        for connection in self.slots.iter().filter_map(Slot::connection) {
            if connection.busy() {
                active += 1;
            } else {
                idle += 1;
            }
        }
        PoolState {
            active,
            idle,
            max: self.pool.max_connections,
            min: self.pool.min_connections,
        }
    }

    /// Drops every connection (shutdown): the server sees them close.
    pub fn close(&self) {
        for slot in self.slots.iter() {
            slot.current.store(None);
        }
    }
}

/// `lifetime` less a random part of a tenth of it, drawn per connection, so connections opened
/// together (the warm ones at start, and every instance of a fleet started at once) are
/// recycled at different times, not all at once against the server or the pooler.
fn spread(lifetime: Duration, index: usize) -> Duration {
    use std::hash::BuildHasher;
    const SHARES: u64 = 1000;
    // A fresh `RandomState` is seeded randomly: a draw per connection without a `rand` crate.
    let draw = std::collections::hash_map::RandomState::new().hash_one(index) % SHARES;
    lifetime - lifetime / 10 * draw as u32 / SHARES as u32
}

impl Failure for PgError {
    fn kind(&self) -> ErrorKind {
        PgError::kind(self)
    }

    fn sqlstate(&self) -> Option<String> {
        PgError::sqlstate(self).map(str::to_owned)
    }
}

/// A statement's values as tokio-postgres parameters. (sea-query-postgres does this, but does
/// not build against the sea-query features SeaORM turns on; the service binds five types.)
struct Params<'a>(Vec<Param<'a>>);

#[derive(Debug)]
struct Param<'a>(&'a Value);

impl<'a> Params<'a> {
    fn new(values: &'a [Value]) -> Self {
        Self(values.iter().map(Param).collect())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|value| value as &(dyn ToSql + Sync))
            .collect()
    }

    /// With their types, for unnamed statements (the server infers nothing from a value).
    fn typed(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.0
            .iter()
            .map(|value| (value as &(dyn ToSql + Sync), value.pg_type()))
            .collect()
    }
}

impl Param<'_> {
    fn pg_type(&self) -> Type {
        pg_type(self.0)
    }
}

/// The PostgreSQL type a value binds as: what an unnamed statement declares, and what a
/// statement casts a parameter to where the server has no column to infer it from.
pub fn pg_type(value: &Value) -> Type {
    match value {
        Value::String(_) => Type::TEXT,
        Value::ChronoDateTimeUtc(_) => Type::TIMESTAMPTZ,
        Value::Uuid(_) => Type::UUID,
        Value::BigInt(_) | Value::BigUnsigned(_) => Type::INT8,
        Value::Int(_) => Type::INT4,
        Value::Bool(_) => Type::BOOL,
        _ => Type::UNKNOWN,
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Value::String(v) => v.as_deref().to_sql(ty, out),
            Value::ChronoDateTimeUtc(v) => v.to_sql(ty, out),
            Value::Uuid(v) => v.to_sql(ty, out),
            // Integers as the statement's parameter type says (`version + 1` binds an i32
            // to a bigint column).
            Value::BigInt(v) => integer(*v, ty, out),
            Value::BigUnsigned(v) => {
                integer(v.map(|n| i64::try_from(n).unwrap_or(i64::MAX)), ty, out)
            }
            Value::Int(v) => integer(v.map(i64::from), ty, out),
            Value::Bool(v) => v.to_sql(ty, out),
            other => Err(format!("no PostgreSQL binding for {other:?}").into()),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn integer(
    value: Option<i64>,
    ty: &Type,
    out: &mut bytes::BytesMut,
) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    let Some(value) = value else {
        return Ok(IsNull::Yes);
    };
    match *ty {
        Type::INT2 => i16::try_from(value)?.to_sql(ty, out),
        Type::INT4 => i32::try_from(value)?.to_sql(ty, out),
        _ => value.to_sql(ty, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_spread_over_their_last_tenth() {
        let lifetime = Duration::from_secs(1800);
        let lifetimes: Vec<Duration> = (0..64).map(|index| spread(lifetime, index % 2)).collect();
        assert!(
            lifetimes
                .iter()
                .all(|l| *l <= lifetime && *l >= lifetime - lifetime / 10)
        );
        let mut distinct = lifetimes.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() > 32,
            "drawn apart, slot or not: {distinct:?}"
        );
    }
}
