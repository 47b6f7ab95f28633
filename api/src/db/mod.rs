//! The database wing: the connection pool built from [`PoolConfig`], the migrations at start,
//! and the timing and classification of every call ([`observe`]). Nothing here knows users.

mod executor;
mod migrate;
mod observe;
mod operation;
pub mod postgres;
pub mod replica;
pub mod server;

pub use executor::{ExecError, Row, Target, Transaction};
pub use migrate::MigrateError;
pub use observe::{Call, ErrorKind, Failure, observe, record_not_found};
pub use operation::Operation;
pub use postgres::Pipelines;
pub use replica::{Freshness, Lsn, Replica};
pub use server::{ConnectError, PgServer, ServerError, SslMode};

use std::path::Path;
use std::sync::Arc;

use migration::{Migrator, MigratorTrait};
use observability::db::{Pool, PoolState, record_pool};
use sea_orm::{ConnectOptions, DatabaseConnection, DbBackend, DbErr};

use crate::config::{Config, ExposeSecret, HealthCheck, PoolConfig, SecretString};

/// The service's database: SeaORM's connection (SQLite's data path; on PostgreSQL, the
/// migrations) and, on PostgreSQL, the pipelined connections every statement runs on, with
/// the replica's for reads when `DATABASE_READ_URL` is set.
#[derive(Clone)]
pub struct Database {
    pub orm: DatabaseConnection,
    pub pg: Option<Arc<Pipelines>>,
    pub replica: Option<Arc<Replica>>,
    /// PostgreSQL: where the migrations and their lock go, and whether that is
    /// `DATABASE_MIGRATION_URL` (trusted to be the database itself).
    migrations: Option<(PgServer, bool)>,
    pool: PoolConfig,
}

/// Why the database cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("invalid {variable}: {source}")]
    Url {
        variable: &'static str,
        source: ServerError,
    },
    #[error(transparent)]
    Unreachable(postgres::PgError),
    #[error(transparent)]
    Orm(#[from] DbErr),
}

impl Database {
    pub async fn connect(config: &Config) -> Result<Self, ConnectFailure> {
        if config.is_sqlite() {
            return Ok(Self {
                orm: Box::pin(connect_sqlite(config)).await?,
                pg: None,
                replica: None,
                migrations: None,
                pool: config.pool.clone(),
            });
        }
        let primary = server(config, "DATABASE_URL", &config.database_url)?;
        let migrations = match &config.migration_url {
            Some(url) => (server(config, "DATABASE_MIGRATION_URL", url)?, true),
            None => (primary.clone(), false),
        };
        // SeaORM's pool only migrates here: one connection, opened when the migrations run
        // (the lock's connection, opened first, reports an unreachable server precisely).
        let orm = Box::pin(connect_postgres(&migrations.0, &config.pool)).await?;
        let pg = Pipelines::connect(primary, &config.pool)
            .await
            .map_err(ConnectFailure::Unreachable)?;
        let slow = config.pool.slow_query;
        pg.set_metric_callback(move |info| log_if_slow(info.sql, info.elapsed, info.failed, slow));
        let pg = Arc::new(pg);
        let replica = match &config.replica {
            Some(replica) => {
                let server = server(config, "DATABASE_READ_URL", &replica.url)?;
                let replica = Replica::new(server, replica, &config.pool);
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
            migrations: Some(migrations),
            pool: config.pool.clone(),
        })
    }

    /// Applies pending migrations (on PostgreSQL, one instance at a time: [`migrate`]).
    pub async fn migrate(&self, lock_timeout: std::time::Duration) -> Result<(), MigrateError> {
        match &self.migrations {
            Some((server, direct)) => {
                migrate::migrate(&self.orm, server, *direct, lock_timeout).await
            }
            None => Migrator::up(&self.orm, None)
                .await
                .map_err(MigrateError::Apply),
        }
    }

    /// No database: for building the spec alone.
    pub fn disconnected() -> Self {
        Self {
            orm: DatabaseConnection::default(),
            pg: None,
            replica: None,
            migrations: None,
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

    /// Where the database is, for messages: `host:port`, or `sqlite`.
    pub fn endpoint(&self) -> &str {
        self.pg.as_ref().map_or("sqlite", |pg| pg.endpoint())
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

/// `url` as a PostgreSQL server, `variable` naming it in errors.
fn server(
    config: &Config,
    variable: &'static str,
    url: &SecretString,
) -> Result<PgServer, ConnectFailure> {
    PgServer::parse(url.expose_secret(), &config.application_name)
        .map_err(|source| ConnectFailure::Url { variable, source })
}

/// SeaORM's connection on SQLite: the data path.
async fn connect_sqlite(config: &Config) -> Result<DatabaseConnection, DbErr> {
    let url = config.database_url.expose_secret();
    create_sqlite_directory(url)
        .map_err(|error| DbErr::Custom(format!("cannot create the SQLite directory: {error}")))?;
    let pool = &config.pool;
    let mut options = ConnectOptions::new(url);
    pool_options(&mut options, pool);
    let busy_timeout = pool.acquire_timeout;
    // WAL lets readers run beside the one writer; the busy timeout makes a writer wait for the
    // lock as long as it would wait for a connection, rather than fail at once.
    options.map_sqlx_sqlite_opts(move |sqlite| {
        sqlite
            .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(busy_timeout)
    });
    finish(options, pool).await
}

/// SeaORM's connection on PostgreSQL (the migrations'): one connection, opened when needed,
/// with the same TLS and names as the pipelines'.
async fn connect_postgres(
    server: &PgServer,
    pool: &PoolConfig,
) -> Result<DatabaseConnection, DbErr> {
    let pool = PoolConfig {
        max_connections: 1,
        min_connections: 0,
        ..pool.clone()
    };
    let sqlx = server
        .sqlx_options()
        .map_err(|error| DbErr::Custom(error.to_string()))?;
    // The URL only tells SeaORM the backend: the options are replaced whole.
    let mut options = ConnectOptions::new("postgres://");
    pool_options(&mut options, &pool);
    options
        .connect_lazy(true)
        .map_sqlx_postgres_opts(move |_| sqlx.clone());
    if let Some(timeout) = pool.statement_timeout {
        options.statement_timeout(timeout);
    }
    finish(options, &pool).await
}

fn pool_options(options: &mut ConnectOptions, pool: &PoolConfig) {
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
}

async fn finish(options: ConnectOptions, pool: &PoolConfig) -> Result<DatabaseConnection, DbErr> {
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
