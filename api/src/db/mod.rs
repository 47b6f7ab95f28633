//! The database wing: the connection pool built from [`PoolConfig`], the migrations at start,
//! and the timing and classification of every call ([`observe`]). Nothing here knows users.

mod executor;
mod observe;
mod operation;
pub mod postgres;
pub mod replica;

pub use executor::{ExecError, Row, Target};
pub use observe::{Call, ErrorKind, Failure, observe, record_not_found};
pub use operation::Operation;
pub use postgres::Pipelines;
pub use replica::{Freshness, Lsn, Replica};

use std::path::Path;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};
use observability::db::{Pool, PoolState, record_pool};
use sea_orm::{ConnectOptions, DatabaseConnection, DbBackend, DbErr};

use crate::config::{Config, HealthCheck, PoolConfig};

/// The service's database: SeaORM's connection (SQLite's data path; on PostgreSQL, the
/// migrations) and, on PostgreSQL, the pipelined connections every statement runs on, with
/// the replica's for reads when `DATABASE_READ_URL` is set.
#[derive(Clone)]
pub struct Database {
    pub orm: DatabaseConnection,
    pub pg: Option<Arc<Pipelines>>,
    pub replica: Option<Arc<Replica>>,
    pool: PoolConfig,
}

impl Database {
    pub async fn connect(config: &Config) -> Result<Self, DbErr> {
        if config.is_sqlite() {
            return Ok(Self {
                orm: Box::pin(connect(config, &config.pool)).await?,
                pg: None,
                replica: None,
                pool: config.pool.clone(),
            });
        }
        // SeaORM's pool only migrates here: one connection, opened when needed.
        let migrations = PoolConfig {
            max_connections: 1,
            min_connections: 0,
            ..config.pool.clone()
        };
        let orm = Box::pin(connect(config, &migrations)).await?;
        let pg = Pipelines::connect(&config.database_url, &config.pool)
            .await
            .map_err(|error| DbErr::Custom(format!("cannot connect to PostgreSQL: {error}")))?;
        let slow = config.pool.slow_query;
        pg.set_metric_callback(move |info| log_if_slow(info.sql, info.elapsed, info.failed, slow));
        let pg = Arc::new(pg);
        let replica = match &config.replica {
            Some(replica) => {
                let replica = Replica::new(replica, &config.pool).map_err(|error| {
                    DbErr::Custom(format!("invalid DATABASE_READ_URL: {error}"))
                })?;
                replica.pipelines.set_metric_callback(move |info| {
                    log_if_slow(info.sql, info.elapsed, info.failed, slow)
                });
                let replica = Arc::new(replica);
                Replica::watch(&replica, &pg);
                Some(replica)
            }
            None => None,
        };
        Ok(Self {
            orm,
            pg: Some(pg),
            replica,
            pool: config.pool.clone(),
        })
    }

    /// No database: for building the spec alone.
    pub fn disconnected() -> Self {
        Self {
            orm: DatabaseConnection::default(),
            pg: None,
            replica: None,
            pool: Config::from_lookup(|_| None)
                .expect("the defaults are valid")
                .pool,
        }
    }

    /// The pool gauges' reading now.
    pub fn pool_state(&self) -> PoolState {
        match &self.pg {
            Some(pg) => pg.state(),
            None => pool_state(&self.orm, &self.pool),
        }
    }

    /// Sets the pool gauges: one set, or with a replica one per pool.
    pub fn record_pools(&self) {
        record_pool(self.primary_pool(), self.pool_state());
        if let Some(replica) = &self.replica {
            record_pool(Some(Pool::Replica), replica.state());
        }
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<(), DbErr> {
        match &self.pg {
            Some(pg) => pg
                .ping()
                .await
                .map_err(|error| DbErr::Custom(error.to_string())),
            None => Box::pin(self.orm.ping()).await,
        }
    }

    /// Recycles old and idle connections (PostgreSQL), on the pool-metrics interval.
    pub async fn housekeeping(&self) {
        if let Some(pg) = &self.pg {
            pg.housekeeping().await;
        }
        if let Some(replica) = &self.replica {
            replica.pipelines.housekeeping().await;
        }
    }

    pub async fn close(&self) -> Result<(), DbErr> {
        if let Some(pg) = &self.pg {
            pg.close();
        }
        if let Some(replica) = &self.replica {
            replica.close();
        }
        self.orm.clone().close().await
    }
}

async fn connect(config: &Config, pool: &PoolConfig) -> Result<DatabaseConnection, DbErr> {
    if config.is_sqlite() {
        create_sqlite_directory(&config.database_url).map_err(|error| {
            DbErr::Custom(format!("cannot create the SQLite directory: {error}"))
        })?;
    }
    let mut options = ConnectOptions::new(&config.database_url);
    options
        .max_connections(pool.max_connections)
        .min_connections(pool.min_connections)
        .acquire_timeout(pool.acquire_timeout)
        .connect_timeout(pool.acquire_timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.max_lifetime)
        // Statements are logged by the slow-query hook below, without their parameters.
        .sqlx_logging(false);
    match pool.health_check {
        HealthCheck::Always => options.test_before_acquire(true),
        HealthCheck::IfIdleFor(idle) => options.test_before_acquire_if_idle_for(idle),
        HealthCheck::Never => options.test_before_acquire(false),
    };
    if let Some(timeout) = pool.statement_timeout {
        options.statement_timeout(timeout);
    }
    if config.is_sqlite() {
        let busy_timeout = pool.acquire_timeout;
        // WAL lets readers run beside the one writer; the busy timeout makes a writer wait
        // for the lock as long as it would wait for a connection, rather than fail at once.
        options.map_sqlx_sqlite_opts(move |sqlite| {
            sqlite
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(busy_timeout)
        });
    }
    let mut db = Box::pin(sea_orm::Database::connect(options)).await?;
    let slow = pool.slow_query;
    db.set_metric_callback(move |info| {
        log_if_slow(&info.statement.sql, info.elapsed, info.failed, slow)
    });
    Ok(db)
}

/// The slow-statement log: the SQL text, never its parameters (they may carry an email or a
/// name).
fn log_if_slow(sql: &str, elapsed: std::time::Duration, failed: bool, slow: std::time::Duration) {
    if elapsed >= slow {
        tracing::warn!(
            sql,
            elapsed_ms = elapsed.as_millis() as u64,
            failed,
            "slow statement"
        );
    }
}

/// The advisory lock that lets one instance at a time migrate: "user-svc" in ASCII.
const MIGRATION_LOCK: i64 = 0x7573_6572_2d73_7663;
/// How often a waiting instance tries the lock.
const MIGRATION_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Applies pending migrations. On PostgreSQL, instances starting together take turns: each
/// holds a session-level advisory lock while it migrates, on a connection of its own (if the
/// process dies, the connection closes and the lock goes with it); the next finds nothing
/// pending and serves.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    use sea_orm::sqlx::{self, Connection as _, PgConnection};
    let sqlx_err = |error: sqlx::Error| DbErr::Custom(format!("migration lock: {error}"));
    let options = db.get_postgres_connection_pool().connect_options();
    let mut lock = PgConnection::connect_with(&options)
        .await
        .map_err(sqlx_err)?;
    // Polled rather than waited for: a session waiting in `pg_advisory_lock` holds a snapshot,
    // and the other instance's `CREATE INDEX CONCURRENTLY` waits for every older snapshot to
    // end, so it would wait for its own waiter.
    let mut said = false;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut lock)
            .await
            .map_err(sqlx_err)?;
        if locked {
            break;
        }
        if !std::mem::replace(&mut said, true) {
            tracing::info!("another instance is migrating: waiting for it");
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
    let migrated = Migrator::up(db, None).await;
    // Closing the session releases the lock.
    let _ = lock.close().await;
    migrated
}

/// SeaORM's pool's current size, for the pool gauges.
fn pool_state(db: &DatabaseConnection, config: &PoolConfig) -> PoolState {
    let (size, idle) = match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX).min(size);
    PoolState {
        active: size - idle,
        idle,
        max: config.max_connections,
        min: config.min_connections,
    }
}

/// `sqlite://data/users.db?mode=rwc` needs `data/` to exist: create it, so the first run on a
/// fresh clone just works.
fn create_sqlite_directory(url: &str) -> std::io::Result<()> {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match Path::new(path).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent),
        _ => Ok(()),
    }
}
