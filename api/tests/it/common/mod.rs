//! Test harness: the real app over a real database, one fresh database per test.
//!
//! SQLite: a file in a temporary directory. PostgreSQL: a database copied from a template that
//! this test process migrated once (crates.io's trick: `CREATE DATABASE ... TEMPLATE` is far
//! quicker than migrating each time). Databases are named after the process id, so a later
//! run can drop what a crashed one left behind without touching a live run's.

#![allow(dead_code)]

pub mod binary;
pub mod pgbouncer;
pub mod redis_server;
pub mod replica;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use api::App;
use api::config::Config;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// Where the PostgreSQL tests go when `TEST_DATABASE_URL` is unset: the local server of a
/// developer machine or CI (TLS off, so sqlx does not negotiate it silently).
const DEFAULT_TEST_DATABASE_URL: &str =
    "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL through PgBouncer in transaction mode, with `DB_PREPARED_STATEMENTS=false`.
    PgBouncer,
}

impl Backend {
    /// The settings a service needs on this backend: through PgBouncer, unnamed statements,
    /// no migrations (the database is migrated directly) and no `options` startup parameter.
    fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Backend::PgBouncer => &[
                ("DB_PREPARED_STATEMENTS", "false"),
                ("RUN_MIGRATIONS", "false"),
                ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ],
            Backend::Sqlite | Backend::Postgres => &[],
        }
    }
}

/// One test's database. Dropping it drops a PostgreSQL database (or the SQLite directory).
pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        name: String,
        url: String,
        /// Through which the service connects, on [`Backend::PgBouncer`].
        bouncer: Option<(pgbouncer::PgBouncer, String)>,
    },
}

impl TestDb {
    /// A fresh database with every migration applied.
    pub async fn new(backend: Backend) -> Self {
        Self::create(backend, true).await
    }

    /// A fresh database with no table at all, for migration tests.
    pub async fn empty(backend: Backend) -> Self {
        Self::create(backend, false).await
    }

    async fn create(backend: Backend, migrated: bool) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("users.db").display()
                );
                TestDb::Sqlite { _dir: dir, url }
            }
            Backend::Postgres | Backend::PgBouncer => {
                let name = format!(
                    "ut_{}_{}",
                    std::process::id(),
                    NEXT_DB.fetch_add(1, Ordering::Relaxed)
                );
                if migrated {
                    let template = template().await;
                    admin_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}")).await;
                } else {
                    admin_execute(&format!("CREATE DATABASE {name}")).await;
                }
                let url = database_url(&name);
                let bouncer = match backend {
                    Backend::PgBouncer => {
                        let bouncer = pgbouncer::start().await;
                        let through = bouncer.url_of(&url);
                        Some((bouncer, through))
                    }
                    _ => None,
                };
                TestDb::Postgres { url, name, bouncer }
            }
        }
    }

    /// Where the database is, directly (tests' own connections, locks, inspection).
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    /// Where the service connects: through PgBouncer on [`Backend::PgBouncer`].
    pub fn service_url(&self) -> &str {
        match self {
            TestDb::Postgres {
                bouncer: Some((_, through)),
                ..
            } => through,
            _ => self.url(),
        }
    }

    /// The PostgreSQL database's name, as `pg_stat_activity` shows it.
    pub fn name(&self) -> &str {
        match self {
            TestDb::Postgres { name, .. } => name,
            TestDb::Sqlite { .. } => panic!("a PostgreSQL database has a name"),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { name, .. } = self {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(admin_execute(&sql));
            })
            .join();
        }
    }
}

static NEXT_DB: AtomicU32 = AtomicU32::new(0);
static TEMPLATE: OnceCell<String> = OnceCell::const_new();

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// The admin URL with its database name replaced by `name`.
pub fn database_url(name: &str) -> String {
    let admin = admin_url();
    let (base, query) = match admin.split_once('?') {
        Some((base, query)) => (base.to_owned(), format!("?{query}")),
        None => (admin.clone(), String::new()),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..]
        .find('/')
        .map(|i| i + authority_end)
        .unwrap_or(base.len());
    format!("{}/{name}{query}", &base[..path_start])
}

pub async fn admin_connection() -> PgConnection {
    let url = admin_url();
    PgConnection::connect(&url).await.unwrap_or_else(|error| {
        panic!(
            "the PostgreSQL tests need a server where they may CREATE DATABASE, named by \
             TEST_DATABASE_URL (default {DEFAULT_TEST_DATABASE_URL}); connecting to {url} \
             failed: {error}"
        )
    })
}

pub async fn admin_execute(sql: &str) {
    let mut admin = admin_connection().await;
    admin
        .execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    let _ = admin.close().await;
}

/// Migrates this process's template database once, after dropping databases that dead
/// test processes left behind.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            drop_stale_databases().await;
            let name = format!("ut_{}_template", std::process::id());
            admin_execute(&format!("CREATE DATABASE {name}")).await;
            let db = sea_orm::Database::connect(database_url(&name))
                .await
                .expect("connect to the template database");
            <migration::Migrator as migration::MigratorTrait>::up(&db, None)
                .await
                .expect("migrate the template database");
            db.close().await.expect("close the template database");
            name
        })
        .await
}

async fn drop_stale_databases() {
    let mut admin = admin_connection().await;
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'ut\\_%'")
            .fetch_all(&mut admin)
            .await
            .expect("list test databases");
    for (name,) in names {
        let pid = name
            .split('_')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
    let _ = admin.close().await;
}

/// The configuration tests run with: defaults, the given database, ephemeral ports.
pub fn test_config(database_url: &str, overrides: &[(&str, &str)]) -> Config {
    Config::from_lookup(|name| {
        overrides
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
            .or_else(|| match name {
                "DATABASE_URL" => Some(database_url.to_owned()),
                "HTTP_ADDR" | "ADMIN_ADDR" => Some("127.0.0.1:0".to_owned()),
                _ => None,
            })
    })
    .expect("valid test configuration")
}

/// A built app on its own database, driven through poem's test client.
pub struct TestApp {
    pub app: App,
    pub client: TestClient<Arc<BoxEndpoint<'static>>>,
    pub db: TestDb,
}

impl TestApp {
    pub async fn new(backend: Backend) -> Self {
        Self::with(backend, &[]).await
    }

    pub async fn with(backend: Backend, overrides: &[(&str, &str)]) -> Self {
        let db = TestDb::new(backend).await;
        let overrides: Vec<_> = overrides
            .iter()
            .chain(backend.settings())
            .copied()
            .collect();
        let app = api::build(test_config(db.service_url(), &overrides))
            .await
            .expect("build the app");
        let client = TestClient::new(app.endpoint());
        Self { app, client, db }
    }

    pub async fn create(&self, email: &str, name: &str) -> TestResponse {
        self.client
            .post("/api/v1/users")
            .body_json(&json!({ "email": email, "name": name }))
            .send()
            .await
    }

    /// Creates a user and returns its JSON.
    pub async fn create_ok(&self, email: &str, name: &str) -> Value {
        let response = self.create(email, name).await;
        response.assert_status(poem::http::StatusCode::CREATED);
        response.json().await.value().deserialize()
    }
}

pub async fn body(response: TestResponse) -> Value {
    response.json().await.value().deserialize()
}

/// Asserts a problem+json response with this status and code, and returns its body.
pub async fn assert_problem(response: TestResponse, status: u16, code: &str) -> Value {
    assert_eq!(response.0.status().as_u16(), status, "status");
    let content_type = response
        .0
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let problem = body(response).await;
    assert_eq!(problem["status"], status);
    assert_eq!(problem["code"], code, "{problem}");
    for member in ["type", "title", "detail"] {
        assert!(
            problem[member].is_string(),
            "problem lacks {member}: {problem}"
        );
    }
    problem
}

/// Asserts a 400 `invalid_request` whose `detail` names `what` (a field, header or parameter).
pub async fn assert_invalid(response: TestResponse, what: &str) {
    let problem = assert_problem(response, 400, "invalid_request").await;
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(what), "{problem}");
}

/// Runs each listed `async fn name(backend: Backend)` on every backend, the contract suite:
/// `sqlite::name`, `postgres::name` and `pgbouncer::name`.
#[macro_export]
macro_rules! on_every_backend {
    ($($test:ident),+ $(,)?) => {
        on_both_backends!($($test),+);
        mod pgbouncer {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::PgBouncer).await
                }
            )+
        }
    };
}

/// Runs each listed `async fn name(backend: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Sqlite).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test($crate::common::Backend::Postgres).await
                }
            )+
        }
    };
}

/// A transaction holding `users` in ACCESS EXCLUSIVE mode on the database at `url`: every
/// statement on the table waits until `ROLLBACK` on the returned connection.
pub async fn lock_users(url: &str) -> PgConnection {
    let mut locker = PgConnection::connect(url).await.expect("connect");
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    locker
}

/// A free local port (bound, read, released) for a process the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Percent-encodes everything but unreserved characters, for query strings.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `condition` every 20 ms until it holds, for at most `seconds`: tests wait on an
/// observable state, never on a guessed delay.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    seconds: u64,
    condition: impl Fn() -> F,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out after {seconds} s waiting for {what}");
}
