//! Migrations at start: one instance at a time, never through a transaction-mode pooler, and
//! never waiting without limit for another instance.
//!
//! The lock is a session-level advisory lock on a connection of its own: it ends with the
//! session, so with the process, where the connection is the database's own. Through a
//! transaction-mode pooler the session is the pooler's server connection, which outlives the
//! client: a lock left there blocked every later start until the pooler closed it (10 minutes).
//! So the migrations refuse such a pooler (set `DATABASE_MIGRATION_URL`); a session-mode pooler
//! is fine (its `DISCARD ALL` releases advisory locks). A transaction-level lock held by an
//! open transaction would end with the client anywhere, but an open transaction stalls the
//! migrations' own `CREATE INDEX CONCURRENTLY` (it waits for every older transaction: measured).
//! Waiting is polled rather than blocking for the same reason: a session waiting in
//! `pg_advisory_lock` holds a snapshot the other instance's concurrent build would wait for.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::server::{ConnectError, PgServer};

/// The lock's key: "user-svc" in ASCII.
const MIGRATION_LOCK: i64 = 0x7573_6572_2d73_7663;
/// How often a waiting instance tries the lock.
const POLL: Duration = Duration::from_millis(200);

/// Who holds the lock: a bigint advisory key is `classid` (high half), `objid` (low half),
/// `objsubid` 1 in `pg_locks`.
const HOLDER: &str = "SELECT a.pid, a.application_name, a.backend_start, host(a.client_addr) \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
     AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "{variable} leads to a transaction-mode pooler at {endpoint} (two sessions ran on one \
         server process, pid {pid}): migrations and their lock need a session of their own; set \
         DATABASE_MIGRATION_URL to the database's own address (not the pooler's), or \
         RUN_MIGRATIONS=false and migrate from elsewhere"
    )]
    Pooler {
        variable: &'static str,
        endpoint: String,
        pid: i32,
    },
    #[error(
        "another instance has held the migration lock for longer than DB_MIGRATION_LOCK_TIMEOUT_SECS \
         ({waited:?}): {holder}"
    )]
    LockTimeout { waited: Duration, holder: Holder },
    #[error("migration lock on {endpoint}: {source}")]
    Lock {
        endpoint: String,
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Apply(DbErr),
}

/// The session holding the migration lock, as `pg_stat_activity` shows it.
#[derive(Debug, Default)]
pub struct Holder {
    pub pid: Option<i32>,
    pub application_name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub client: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(pid) = self.pid else {
            return f.write_str("its holder is no longer visible");
        };
        write!(f, "pid {pid}")?;
        if let Some(name) = self
            .application_name
            .as_deref()
            .filter(|name| !name.is_empty())
        {
            write!(f, ", application_name {name}")?;
        }
        if let Some(client) = &self.client {
            write!(f, ", from {client}")?;
        }
        if let Some(since) = self.since {
            write!(f, ", connected since {}", since.to_rfc3339())?;
        }
        Ok(())
    }
}

/// Applies pending migrations on `orm` while holding the lock on `server` (the same database).
/// `direct`: `server` is `DATABASE_MIGRATION_URL` (said in the refusal of a pooler).
pub async fn migrate(
    orm: &DatabaseConnection,
    server: &PgServer,
    direct: bool,
    timeout: Duration,
) -> Result<(), MigrateError> {
    let lock_error = lock_error(server);
    let lock = session_of_its_own(server, direct).await?;
    let started = Instant::now();
    let mut said = false;
    loop {
        let locked: bool = lock
            .query_typed(
                "SELECT pg_try_advisory_lock($1)",
                &[(&MIGRATION_LOCK, Type::INT8)],
            )
            .await
            .map_err(lock_error)?[0]
            .get(0);
        if locked {
            break;
        }
        let holder = holder(&lock).await.map_err(lock_error)?;
        if started.elapsed() >= timeout {
            return Err(MigrateError::LockTimeout {
                waited: timeout,
                holder,
            });
        }
        if !std::mem::replace(&mut said, true) {
            tracing::info!(
                %holder,
                timeout_secs = timeout.as_secs(),
                "another instance is migrating: waiting for it"
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let applied = Migrator::up(orm, None).await;
    // Released now, not when the connection's close reaches the server.
    let _ = lock
        .query_typed(
            "SELECT pg_advisory_unlock($1)",
            &[(&MIGRATION_LOCK, Type::INT8)],
        )
        .await;
    applied.map_err(MigrateError::Apply)
}

async fn open(server: &PgServer) -> Result<Client, ConnectError> {
    let (client, driver) = server.connect().await?;
    tokio::spawn(async move {
        let _ = driver.await;
    });
    Ok(client)
}

fn lock_error(server: &PgServer) -> impl Fn(tokio_postgres::Error) -> MigrateError + Copy + '_ {
    |source| MigrateError::Lock {
        endpoint: server.endpoint().to_owned(),
        source,
    }
}

/// A session for the lock, refused when it is not a session of its own: two sessions opened
/// together run on different server processes, unless a pooler hands out server connections
/// per transaction: then the second, idle pool's most recently used connection is the first's.
/// (Under other traffic the pooler may hand out another one; the check can then miss, never
/// refuse wrongly.) The first session is the one returned.
async fn session_of_its_own(server: &PgServer, direct: bool) -> Result<Client, MigrateError> {
    let lock_error = lock_error(server);
    let first = open(server).await?;
    let second = open(server).await?;
    let mut pids = [0; 2];
    for (pid, client) in pids.iter_mut().zip([&first, &second]) {
        *pid = client
            .query_typed("SELECT pg_backend_pid()", &[])
            .await
            .map_err(lock_error)?[0]
            .get(0);
    }
    if pids[0] == pids[1] {
        return Err(MigrateError::Pooler {
            variable: if direct {
                "DATABASE_MIGRATION_URL"
            } else {
                "DATABASE_URL"
            },
            endpoint: server.endpoint().to_owned(),
            pid: pids[0],
        });
    }
    Ok(first)
}

async fn holder(client: &Client) -> Result<Holder, tokio_postgres::Error> {
    let rows = client
        .query_typed(HOLDER, &[(&MIGRATION_LOCK, Type::INT8)])
        .await?;
    Ok(rows
        .first()
        .map(|row| Holder {
            pid: row.get(0),
            application_name: row.get(1),
            since: row.get(2),
            client: row.get(3),
        })
        .unwrap_or_default())
}
