//! Index changes on a live table. On PostgreSQL each index is built `CONCURRENTLY`, outside a
//! transaction, so writes go on while it builds (a plain `CREATE INDEX` locks them out for the
//! whole build: minutes on tens of millions of rows). A concurrent build that fails leaves an
//! INVALID index behind; a rerun finds it (`pg_index.indisvalid`), drops it and builds it again,
//! and a migration is recorded as applied only once every index is valid. Each statement takes
//! its lock within `lock_timeout` and is retried a few times, so a long transaction in the way
//! fails the migration with a message instead of stalling it indefinitely.

use std::time::Duration;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::sqlx::{self, Connection as _, PgConnection};
use sea_orm_migration::sea_orm::{DatabaseExecutor, DbBackend};

/// An index, as each backend writes it.
pub struct Index {
    pub name: &'static str,
    /// What follows `CREATE INDEX name` on PostgreSQL.
    pub postgres: &'static str,
    /// The same on SQLite.
    pub sqlite: &'static str,
}

/// How long a statement waits for its lock before it gives up (and is retried).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of a statement that could not take its lock.
pub const LOCK_ATTEMPTS: u32 = 3;

/// A connection of the migration's own, so its session settings hold for every statement: no
/// statement timeout (a build takes as long as the table needs), a lock timeout.
pub async fn dedicated(manager: &SchemaManager<'_>) -> Result<PgConnection, DbErr> {
    let DatabaseExecutor::Connection(db) = manager.get_connection() else {
        return Err(DbErr::Custom(
            "an online index change must run outside a transaction".to_owned(),
        ));
    };
    let pool = db.get_postgres_connection_pool();
    let mut conn = PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(sqlx_err)?;
    let settings = format!(
        "SET statement_timeout = 0; SET lock_timeout = '{}ms'",
        LOCK_TIMEOUT.as_millis()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(settings))
        .execute(&mut conn)
        .await
        .map_err(sqlx_err)?;
    Ok(conn)
}

/// Creates `indexes` that do not exist yet: on PostgreSQL online (a dedicated connection,
/// `CONCURRENTLY`, an INVALID leftover rebuilt, lock retries), on SQLite plainly.
pub async fn create_all(manager: &SchemaManager<'_>, indexes: &[Index]) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        for index in indexes {
            let sql = format!("CREATE INDEX IF NOT EXISTS {} {}", index.name, index.sqlite);
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        return Ok(());
    }
    let mut conn = dedicated(manager).await?;
    for index in indexes {
        build_concurrently(&mut conn, index).await?;
    }
    Ok(())
}

/// Drops `indexes` that exist: on PostgreSQL `CONCURRENTLY` with lock retries.
pub async fn drop_all(manager: &SchemaManager<'_>, indexes: &[Index]) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        for index in indexes {
            let sql = format!("DROP INDEX IF EXISTS {}", index.name);
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        return Ok(());
    }
    let mut conn = dedicated(manager).await?;
    for index in indexes {
        with_lock_retries(&mut conn, &drop_concurrently(index.name)).await?;
    }
    Ok(())
}

pub fn drop_concurrently(name: &str) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {name}")
}

pub async fn build_concurrently(conn: &mut PgConnection, index: &Index) -> Result<(), DbErr> {
    let create = format!(
        "CREATE INDEX CONCURRENTLY {} {}",
        index.name, index.postgres
    );
    for attempt in 1..=LOCK_ATTEMPTS {
        match validity(conn, index.name).await? {
            Some(true) => return Ok(()),
            Some(false) => {
                tracing::warn!(
                    index = index.name,
                    "an earlier build left this index INVALID: dropping and rebuilding it"
                );
                with_lock_retries(conn, &drop_concurrently(index.name)).await?;
            }
            None => {}
        }
        match run(conn, &create).await {
            Ok(()) => break,
            Err(error) if lock_timed_out(&error) && attempt < LOCK_ATTEMPTS => {
                warn_retry(attempt, &create);
            }
            Err(error) if lock_timed_out(&error) => return Err(lock_failure(&create)),
            Err(error) => {
                return Err(DbErr::Migration(format!(
                    "building index {} failed: {error}. The failed build leaves it INVALID; \
                     running the migration again drops and rebuilds it",
                    index.name
                )));
            }
        }
    }
    match validity(conn, index.name).await? {
        Some(true) => Ok(()),
        _ => Err(DbErr::Migration(format!(
            "index {} is not valid after its build; running the migration again rebuilds it",
            index.name
        ))),
    }
}

async fn run(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .map(drop)
}

fn lock_timed_out(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(error) if error.code().as_deref() == Some("55P03"))
}

fn warn_retry(attempt: u32, sql: &str) {
    tracing::warn!(
        attempt,
        statement = sql,
        "could not take the lock within lock_timeout: a long transaction holds `users`; retrying"
    );
}

fn lock_failure(sql: &str) -> DbErr {
    DbErr::Migration(format!(
        "{sql}: could not take the lock within {} ms, {LOCK_ATTEMPTS} times: a long transaction \
         holds `users` (see pg_stat_activity); end it and run the migration again",
        LOCK_TIMEOUT.as_millis()
    ))
}

/// Runs `sql`, retrying when it could not take its lock within `lock_timeout`.
pub async fn with_lock_retries(conn: &mut PgConnection, sql: &str) -> Result<(), DbErr> {
    for attempt in 1..=LOCK_ATTEMPTS {
        match run(conn, sql).await {
            Ok(()) => return Ok(()),
            Err(error) if lock_timed_out(&error) && attempt < LOCK_ATTEMPTS => {
                warn_retry(attempt, sql);
            }
            Err(error) if lock_timed_out(&error) => return Err(lock_failure(sql)),
            Err(error) => return Err(sqlx_err(error)),
        }
    }
    unreachable!("the last attempt returns")
}

/// Whether the index exists, and if so whether it is valid.
async fn validity(conn: &mut PgConnection, name: &str) -> Result<Option<bool>, DbErr> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = $1 AND pg_table_is_visible(c.oid)",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sqlx_err)
}

fn sqlx_err(error: sqlx::Error) -> DbErr {
    DbErr::Custom(error.to_string())
}
