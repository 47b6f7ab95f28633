//! PostgreSQL's data path: a few shared connections, each carrying many requests' statements
//! at once (pipelining: tokio-postgres writes every queued statement in one syscall and reads
//! their results in one, and PostgreSQL wakes once for many). A pool that lends a connection to
//! one request at a time pays a round trip, a wake-up and a context switch per statement on
//! each side; on the 2-core reference machine that capped the service at a third of what
//! PostgreSQL serves (docs/architecture.md, bench/RESULTS.md).
//!
//! Reads and writes take different connections: a pipeline runs its statements in order, and a
//! write waits for its commit's WAL flush, so a read queued behind it would wait too. The first
//! `DB_READ_CONNECTIONS` connections carry reads, the rest writes; either spills into the other's
//! when its own pipelines are full. One read connection served most on the reference machine
//! (bench/RESULTS.md): one backend woken once for many statements.
//!
//! The `DB_*` settings keep their meaning, applied to these connections:
//! `DB_MAX_CONNECTIONS` connections at most, `DB_MIN_CONNECTIONS` opened at start, a statement
//! waits at most `DB_ACQUIRE_TIMEOUT_SECS` for a connection (opening one, or a free place in
//! its pipeline), `DB_TEST_BEFORE_ACQUIRE` pings a connection idle for `DB_TEST_IDLE_SECS`,
//! and connections past `DB_MAX_LIFETIME_SECS`, or idle past `DB_IDLE_TIMEOUT_SECS` beyond the
//! minimum, are closed by the housekeeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use observability::db::PoolState;
use sea_orm::sea_query::Value;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Row, Statement};

use super::ErrorKind;
use crate::config::{HealthCheck, PoolConfig};

/// Statements one connection carries at once; more wait (up to the acquire timeout) for a
/// place, so an overloaded database answers 503 instead of queueing without bound. Deep enough
/// for 256 client connections' reads on the one read connection: at 64, reads past it spilled
/// onto the write connections and 256 clients got 0.74x of what 64 did (bench/history).
pub const PIPELINE_DEPTH: usize = 256;

/// A failed call: the driver's error, or no connection within the acquire timeout.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(transparent)]
    Driver(#[from] tokio_postgres::Error),
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
        };
        if error.is_closed() {
            return ErrorKind::Connection;
        }
        match error.code().map(|code| code.code()) {
            Some("23505") => ErrorKind::UniqueViolation,
            // query_canceled (statement_timeout), lock_not_available.
            Some("57014" | "55P03") => ErrorKind::Timeout,
            // Connection exceptions, shutdown/crash, too many connections.
            Some(code) if code.starts_with("08") || code.starts_with("57P") || code == "53300" => {
                ErrorKind::Connection
            }
            Some(_) => ErrorKind::Other,
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
            PgError::AcquireTimeout | PgError::NoAnswer(_) => None,
        }
    }
}

/// One open connection and what it has prepared.
struct Connection {
    client: Client,
    statements: RwLock<HashMap<String, Statement>>,
    pipeline: Arc<Semaphore>,
    opened: Instant,
    /// Milliseconds since `opened` of the last statement sent, for idle checks.
    last_used_ms: AtomicU64,
}

impl Connection {
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    fn touch(&self) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_used_ms.store(now, Ordering::Relaxed);
    }

    /// Statements sent and not yet answered.
    fn in_flight(&self) -> usize {
        PIPELINE_DEPTH - self.pipeline.available_permits()
    }

    fn busy(&self) -> bool {
        self.in_flight() > 0
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

/// One place for a connection: empty until opened, emptied when it breaks or is recycled.
#[derive(Default)]
struct Slot {
    current: ArcSwapOption<Connection>,
    /// Held while (re)opening, so one task opens and the others wait for it.
    opening: Mutex<()>,
}

impl Slot {
    /// The slot's connection, unless it is empty or the server closed it.
    fn connection(&self) -> Option<Arc<Connection>> {
        self.current
            .load_full()
            .filter(|connection| !connection.client.is_closed())
    }
}

/// What a statement does, for the choice of connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Read,
    Write,
}

pub struct Pipelines {
    slots: Box<[Slot]>,
    /// `slots[..reads]` carry reads, the rest writes (all of them when there is only one).
    reads: usize,
    /// Round-robin positions of the read and the write lane.
    next: [AtomicUsize; 2],
    config: tokio_postgres::Config,
    pool: PoolConfig,
    callback: ArcSwapOption<Box<MetricCallback>>,
}

/// What ran, for a metric callback (as SeaORM's `set_metric_callback` reports it).
pub struct StatementInfo<'a> {
    pub sql: &'a str,
    pub values: &'a [Value],
    /// Prepared (named, planned once), or unnamed (planned with its values).
    pub prepared: bool,
    pub elapsed: Duration,
    pub failed: bool,
}

pub type MetricCallback = dyn Fn(&StatementInfo<'_>) + Send + Sync;

/// A connection lent for one statement: a place in its pipeline.
struct Lease {
    connection: Arc<Connection>,
    _place: OwnedSemaphorePermit,
}

impl Pipelines {
    /// Parses `url` and opens `DB_MIN_CONNECTIONS` connections.
    pub async fn connect(url: &str, pool: &PoolConfig) -> Result<Self, PgError> {
        let pipelines = Self::new(url, pool)?;
        for slot in pipelines.slots.iter().take(pool.min_connections as usize) {
            pipelines.open(slot).await?;
        }
        Ok(pipelines)
    }

    /// Parses `url`; connections open on first use (and the housekeeping keeps
    /// `DB_MIN_CONNECTIONS` of them open).
    pub fn new(url: &str, pool: &PoolConfig) -> Result<Self, PgError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if let Some(timeout) = pool.statement_timeout {
            config.options(format!("-c statement_timeout={}", timeout.as_millis()));
        }
        config.connect_timeout(pool.acquire_timeout);
        let slots = (0..pool.max_connections).map(|_| Slot::default()).collect();
        // With a single connection both lanes share it; otherwise writes keep at least one.
        let reads = (pool.read_connections as usize).min(pool.max_connections.max(2) as usize - 1);
        Ok(Self {
            slots,
            reads,
            next: [AtomicUsize::new(0), AtomicUsize::new(0)],
            config,
            pool: pool.clone(),
            callback: ArcSwapOption::empty(),
        })
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

    /// A round trip on a read connection.
    pub async fn ping(&self) -> Result<(), PgError> {
        self.run(Lane::Read, "", &[], false, |connection| async move {
            connection.client.simple_query("").await.map(drop)
        })
        .await
    }

    /// Runs `call`, the statement `sql` with `values`, on a leased connection.
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
        let (slot, lease) = tokio::time::timeout(self.pool.acquire_timeout, self.lease(lane))
            .await
            .map_err(|_| PgError::AcquireTimeout)??;
        lease.connection.touch();
        let started = Instant::now();
        let result = call(Arc::clone(&lease.connection)).await;
        if let Some(callback) = &*self.callback.load() {
            callback(&StatementInfo {
                sql,
                values,
                prepared,
                elapsed: started.elapsed(),
                failed: result.is_err(),
            });
        }
        if let Err(error) = &result
            && error.is_closed()
        {
            // Broken: the next statement on this slot opens a new connection.
            slot.current
                .compare_and_swap(&Some(Arc::clone(&lease.connection)), None);
        }
        Ok(result?)
    }

    /// A place in a pipeline of the lane's open connections, round robin; when they are full, a
    /// new connection in the lane (up to `DB_MAX_CONNECTIONS`), then a place in the other lane;
    /// when nothing has room and nothing can be opened, a wait for a place in the lane.
    async fn lease(&self, lane: Lane) -> Result<(&Slot, Lease), PgError> {
        let (own, other) = match lane {
            Lane::Read if self.reads < self.slots.len() => self.slots.split_at(self.reads),
            Lane::Write if self.reads < self.slots.len() => {
                let (reads, writes) = self.slots.split_at(self.reads);
                (writes, reads)
            }
            _ => (&self.slots[..], &[][..]),
        };
        let next = &self.next[lane as usize];
        let start = next.fetch_add(1, Ordering::Relaxed);
        if let Some((slot, connection, place)) = place_in(own, start) {
            return self.lend(slot, connection, place).await;
        }
        if let Some(slot) = own.iter().find(|slot| slot.connection().is_none()) {
            let connection = self.open(slot).await?;
            return self.wait_in(slot, connection).await;
        }
        if let Some((slot, connection, place)) = place_in(other, start) {
            return self.lend(slot, connection, place).await;
        }
        let slot = open_in(own)
            .nth(start % open_in(own).count().max(1))
            .map_or(&own[0], |(slot, _)| slot);
        let connection = match slot.connection() {
            Some(connection) => connection,
            None => self.open(slot).await?,
        };
        self.wait_in(slot, connection).await
    }

    /// Waits for a place in `connection`'s pipeline.
    async fn wait_in<'a>(
        &self,
        slot: &'a Slot,
        connection: Arc<Connection>,
    ) -> Result<(&'a Slot, Lease), PgError> {
        let place = Arc::clone(&connection.pipeline)
            .acquire_owned()
            .await
            .expect("never closed");
        self.lend(slot, connection, place).await
    }

    async fn lend<'a>(
        &self,
        slot: &'a Slot,
        connection: Arc<Connection>,
        place: OwnedSemaphorePermit,
    ) -> Result<(&'a Slot, Lease), PgError> {
        let connection = self.checked(slot, connection).await?;
        Ok((
            slot,
            Lease {
                connection,
                _place: place,
            },
        ))
    }

    /// `DB_TEST_BEFORE_ACQUIRE`: pings a connection before use when asked to; a failed ping
    /// replaces it.
    async fn checked(
        &self,
        slot: &Slot,
        connection: Arc<Connection>,
    ) -> Result<Arc<Connection>, PgError> {
        let ping = match self.pool.health_check {
            HealthCheck::Always => true,
            HealthCheck::IfIdleFor(idle) => connection.idle_for() >= idle,
            HealthCheck::Never => false,
        };
        if !ping || connection.client.simple_query("").await.is_ok() {
            return Ok(connection);
        }
        slot.current.compare_and_swap(&Some(connection), None);
        self.open(slot).await
    }

    /// Opens the slot's connection unless another task just did.
    async fn open(&self, slot: &Slot) -> Result<Arc<Connection>, PgError> {
        let _opening = slot.opening.lock().await;
        if let Some(connection) = slot.connection() {
            return Ok(connection);
        }
        let (client, driver) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                tracing::debug!(%error, "database connection closed");
            }
        });
        let connection = Arc::new(Connection {
            client,
            statements: RwLock::default(),
            pipeline: Arc::new(Semaphore::new(PIPELINE_DEPTH)),
            opened: Instant::now(),
            last_used_ms: AtomicU64::new(0),
        });
        slot.current.store(Some(Arc::clone(&connection)));
        Ok(connection)
    }

    /// Closes connections past `DB_MAX_LIFETIME_SECS`, and those idle past
    /// `DB_IDLE_TIMEOUT_SECS` beyond `DB_MIN_CONNECTIONS`; reopens up to the minimum. Statements
    /// in flight on a closed connection finish first (the client lives until they do).
    pub async fn housekeeping(&self) {
        let mut open = 0;
        for slot in self.slots.iter() {
            let Some(connection) = slot.current.load_full() else {
                continue;
            };
            let expired = self
                .pool
                .max_lifetime
                .is_some_and(|lifetime| connection.opened.elapsed() >= lifetime);
            let idle = open >= self.pool.min_connections
                && !connection.busy()
                && self
                    .pool
                    .idle_timeout
                    .is_some_and(|timeout| connection.idle_for() >= timeout);
            if expired || idle || connection.client.is_closed() {
                slot.current.compare_and_swap(&Some(connection), None);
            } else {
                open += 1;
            }
        }
        for slot in self.slots.iter() {
            if open >= self.pool.min_connections {
                break;
            }
            if slot.current.load().is_none() && self.open(slot).await.is_ok() {
                open += 1;
            }
        }
    }

    /// The pool gauges: a connection is active while it carries a statement.
    pub fn state(&self) -> PoolState {
        let (mut active, mut idle) = (0, 0);
        for slot in self.slots.iter() {
            if let Some(connection) = slot.connection() {
                if connection.busy() {
                    active += 1;
                } else {
                    idle += 1;
                }
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

/// The open connections among `slots`.
fn open_in(slots: &[Slot]) -> impl Iterator<Item = (&Slot, Arc<Connection>)> {
    slots
        .iter()
        .filter_map(|slot| Some((slot, slot.connection()?)))
}

/// A free place in the least loaded of the open connections among `slots` (fewest statements
/// in flight: one held by a lock or a slow commit is passed over), ties going round robin from
/// `start` (over the open ones: going round the slots, most of them empty, sent nearly
/// everything to the first open one; bench/RESULTS.md).
fn place_in(
    slots: &[Slot],
    start: usize,
) -> Option<(&Slot, Arc<Connection>, OwnedSemaphorePermit)> {
    let start = start % open_in(slots).count().max(1);
    let rotated = || open_in(slots).skip(start).chain(open_in(slots).take(start));
    // The first of the least loaded: equal loads keep their round-robin order.
    let least_loaded = rotated().min_by_key(|(_, connection)| connection.in_flight());
    least_loaded
        .into_iter()
        .chain(rotated())
        .find_map(|(slot, connection)| {
            let place = Arc::clone(&connection.pipeline).try_acquire_owned().ok()?;
            Some((slot, connection, place))
        })
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
        match self.0 {
            Value::String(_) => Type::TEXT,
            Value::ChronoDateTimeUtc(_) => Type::TIMESTAMPTZ,
            Value::Uuid(_) => Type::UUID,
            Value::BigInt(_) | Value::BigUnsigned(_) => Type::INT8,
            Value::Int(_) => Type::INT4,
            Value::Bool(_) => Type::BOOL,
            _ => Type::UNKNOWN,
        }
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
