//! The database wing: the connection pool built from [`PoolConfig`], the migrations at start,
//! and the timing and classification of every call ([`observe`]). Nothing here knows users.

mod observe;
mod operation;

pub use observe::{ErrorKind, observe, record_not_found};
pub use operation::Operation;

use std::path::Path;

use migration::{Migrator, MigratorTrait};
use observability::db::PoolState;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};

use crate::config::{Config, HealthCheck, PoolConfig};

pub async fn connect(config: &Config) -> Result<DatabaseConnection, DbErr> {
    if config.is_sqlite() {
        create_sqlite_directory(&config.database_url).map_err(|error| {
            DbErr::Custom(format!("cannot create the SQLite directory: {error}"))
        })?;
    }
    let pool = &config.pool;
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
    let mut db = Database::connect(options).await?;
    let slow = pool.slow_query;
    db.set_metric_callback(move |info| {
        if info.elapsed >= slow {
            tracing::warn!(
                sql = %info.statement.sql,
                elapsed_ms = info.elapsed.as_millis() as u64,
                failed = info.failed,
                "slow statement"
            );
        }
    });
    Ok(db)
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

/// The pool's current size, for the pool gauges.
pub fn pool_state(db: &DatabaseConnection, config: &PoolConfig) -> PoolState {
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
