//! What each migration guarantees on its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::common::{Backend, TestDb, admin_connection, test_config};
use migration::{Migrator, MigratorTrait, MigratorWithoutIndexes};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::json;

on_both_backends!(emails_are_unique_from_the_first_migration_on);

/// Uniqueness is correctness, not an optimization: the table's own migration enforces it, so
/// no database (the bench's "before" one included) ever holds two users with one email.
async fn emails_are_unique_from_the_first_migration_on(backend: Backend) {
    let test_db = TestDb::empty(backend).await;
    let db = Database::connect(test_db.url()).await.unwrap();
    MigratorWithoutIndexes::up(&db, None).await.unwrap();
    let insert = |id: &str, email: &str| {
        format!(
            "INSERT INTO users (id, email, name, created_at, updated_at, version) \
             VALUES ('{id}', '{email}', 'Ada', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 1)"
        )
    };
    db.execute_unprepared(&insert(
        "0195e3a0-0000-7000-8000-000000000001",
        "Ada@Example.com",
    ))
    .await
    .unwrap();
    let duplicate = db
        .execute_unprepared(&insert(
            "0195e3a0-0000-7000-8000-000000000002",
            "ada@example.COM",
        ))
        .await;
    assert!(
        duplicate.is_err(),
        "a second user with the same email in another case was stored"
    );
    db.close().await.unwrap();
}

/// A fresh PostgreSQL database holding `rows` users under the first migration only: the table
/// `optimize_indexes` lands on in production.
async fn live_table(rows: u32) -> (TestDb, sea_orm::DatabaseConnection) {
    let test_db = TestDb::empty(Backend::Postgres).await;
    let db = Database::connect(test_db.url()).await.unwrap();
    MigratorWithoutIndexes::up(&db, None).await.unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO users (id, email, name, created_at, updated_at, version)
         SELECT gen_random_uuid(), 'seed' || g || '@example.com', 'Seeded ' || md5(g::text),
                now() - g * interval '1 second', now() - g * interval '1 second', 1
         FROM generate_series(1, {rows}) AS g"
    ))
    .await
    .unwrap();
    (test_db, db)
}

/// Each optimization index and whether it is valid.
/// The indexes built online on `users` once every migration ran: created_at, updated_at, the
/// name order, the change feed's position.
const ONLINE_INDEXES: usize = 4;

async fn indexes(db: &sea_orm::DatabaseConnection) -> Vec<(String, bool)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT c.relname AS name, i.indisvalid AS valid FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'users'::regclass AND c.relname LIKE '%\\_idx' ORDER BY 1",
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            (
                row.try_get("", "name").unwrap(),
                row.try_get("", "valid").unwrap(),
            )
        })
        .collect()
}

/// Whether an index build is in progress on the database (`pg_stat_progress_create_index`) in
/// a phase like `phase`, and the backend running it.
async fn building(admin: &mut PgConnection, database: &str, phase: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT p.pid FROM pg_stat_progress_create_index p
         JOIN pg_database d ON d.oid = p.datid WHERE d.datname = $1 AND p.phase LIKE $2",
    )
    .bind(database)
    .bind(phase)
    .fetch_optional(admin)
    .await
    .unwrap()
}

fn database_name(test_db: &TestDb) -> String {
    let url = test_db.url();
    url[url.rfind('/').unwrap() + 1..]
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_completing_while_the_indexes_build() {
    let (test_db, db) = live_table(300_000).await;
    let app = api::build(test_config(test_db.url(), &[("RUN_MIGRATIONS", "false")]))
        .await
        .unwrap();
    let client = poem::test::TestClient::new(app.endpoint());
    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let done = Arc::clone(&done);
        async move {
            let mut finished = Vec::new();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                n += 1;
                let response = client
                    .post("/api/v1/users")
                    .body_json(&json!({"email": format!("live{n}@example.com"), "name": "Live"}))
                    .send()
                    .await;
                assert_eq!(response.0.status(), 201);
                finished.push(Instant::now());
            }
            finished
        }
    });
    let migration = tokio::spawn(async move {
        let migrated = Migrator::up(&db, None).await;
        (db, migrated)
    });
    // Watch the builds: when each was seen in progress.
    let mut admin = admin_connection().await;
    let name = database_name(&test_db);
    let mut in_progress = Vec::new();
    while !migration.is_finished() {
        if building(&mut admin, &name, "%").await.is_some() {
            in_progress.push(Instant::now());
        }
    }
    let (db, migrated) = migration.await.unwrap();
    migrated.expect("optimize_indexes applies");
    done.store(true, Ordering::Relaxed);
    let finished = writer.await.unwrap();
    let (first, last) = (in_progress.first().unwrap(), in_progress.last().unwrap());
    let during = finished
        .iter()
        .filter(|at| *at > first && *at < last)
        .count();
    assert!(
        during >= 20,
        "only {during} writes completed while the indexes built ({:?}): writes were blocked",
        *last - *first
    );
    let indexes = indexes(&db).await;
    assert_eq!(indexes.len(), ONLINE_INDEXES, "{indexes:?}");
    assert!(indexes.iter().all(|(_, valid)| *valid), "{indexes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cancelled_midway_fails_the_migration_and_a_rerun_repairs_it() {
    let (test_db, db) = live_table(300_000).await;
    let migration = tokio::spawn(async move {
        let migrated = Migrator::up(&db, None).await;
        (db, migrated)
    });
    let mut admin = admin_connection().await;
    let name = database_name(&test_db);
    let pid = loop {
        // Once the index exists in the catalog: a cancel then leaves it INVALID.
        if let Some(pid) = building(&mut admin, &name, "building index%").await {
            break pid;
        }
        assert!(
            !migration.is_finished(),
            "the builds ended before one was seen"
        );
    };
    sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await
        .unwrap();
    let (db, migrated) = migration.await.unwrap();
    let error = migrated
        .expect_err("a cancelled build fails the migration")
        .to_string();
    assert!(error.contains("INVALID"), "{error}");
    let left = indexes(&db).await;
    assert!(left.iter().any(|(_, valid)| !valid), "{left:?}");
    let applied = Migrator::get_applied_migrations(&db).await.unwrap();
    assert_eq!(
        applied.len(),
        1,
        "recorded as applied with an invalid index"
    );

    Migrator::up(&db, None).await.expect("the rerun repairs it");
    let repaired = indexes(&db).await;
    assert_eq!(repaired.len(), ONLINE_INDEXES, "{repaired:?}");
    assert!(repaired.iter().all(|(_, valid)| *valid), "{repaired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once_and_all_serve() {
    let test_db = TestDb::empty(Backend::Postgres).await;
    let config = test_config(test_db.url(), &[]);
    let (a, b, c) = tokio::join!(
        api::build(config.clone()),
        api::build(config.clone()),
        api::build(config)
    );
    for app in [a.unwrap(), b.unwrap(), c.unwrap()] {
        let client = poem::test::TestClient::new(app.endpoint());
        client
            .get("/health/ready")
            .send()
            .await
            .assert_status_is_ok();
    }
    let db = Database::connect(test_db.url()).await.unwrap();
    let applied = Migrator::get_applied_migrations(&db).await.unwrap();
    assert_eq!(applied.len(), Migrator::migrations().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_in_the_way_fails_the_build_with_a_message() {
    let (test_db, db) = live_table(1_000).await;
    // SHARE conflicts with the SHARE UPDATE EXCLUSIVE lock a concurrent build takes.
    let mut holder = PgConnection::connect(test_db.url()).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder
        .execute("LOCK TABLE users IN SHARE MODE")
        .await
        .unwrap();
    let error = Migrator::up(&db, None)
        .await
        .expect_err("the lock is never granted")
        .to_string();
    assert!(
        error.contains("could not take the lock") && error.contains("long transaction"),
        "{error}"
    );
    holder.execute("ROLLBACK").await.unwrap();
    Migrator::up(&db, None)
        .await
        .expect("applies once the lock is free");
}

/// The migration lock's key, as the service takes it ("user-svc" in ASCII).
const MIGRATION_LOCK: i64 = 0x7573_6572_2d73_7663;

/// Through a transaction-mode pooler, migrating is refused in one line that says what to set
/// (before: "prepared statement sqlx_s_1 already exists", and a session lock left on the
/// pooler's server connection blocked every later start for 10 minutes); with
/// `DATABASE_MIGRATION_URL` naming the database itself the service migrates there and serves
/// through the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_transaction_pooler_migrations_need_a_direct_url() {
    let test_db = TestDb::empty(Backend::PgBouncer).await;
    let pooled = [
        ("DB_PREPARED_STATEMENTS", "false"),
        ("DB_STATEMENT_TIMEOUT_MS", "0"),
    ];
    let error = api::build(test_config(test_db.service_url(), &pooled))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("transaction-mode pooler") && error.contains("DATABASE_MIGRATION_URL"),
        "{error}"
    );
    assert_eq!(error.lines().count(), 1, "{error}");
    let db = Database::connect(test_db.url()).await.unwrap();
    assert!(
        Migrator::get_applied_migrations(&db)
            .await
            .unwrap()
            .is_empty(),
        "nothing was migrated"
    );
    // Nothing is left holding the lock: it is free on the database itself.
    let mut direct = PgConnection::connect(test_db.url()).await.unwrap();
    let (free,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .fetch_one(&mut direct)
        .await
        .unwrap();
    assert!(free, "the lock was left behind");
    direct.close().await.unwrap();

    let with_direct: Vec<_> = pooled
        .into_iter()
        .chain([("DATABASE_MIGRATION_URL", test_db.url())])
        .collect();
    let app = api::build(test_config(test_db.service_url(), &with_direct))
        .await
        .expect("migrates directly, serves through the pooler");
    let client = poem::test::TestClient::new(app.endpoint());
    client
        .post("/api/v1/users")
        .body_json(&serde_json::json!({ "email": "pooled@example.com", "name": "Pooled" }))
        .send()
        .await
        .assert_status(poem::http::StatusCode::CREATED);
    assert_eq!(
        Migrator::get_applied_migrations(&db).await.unwrap().len(),
        Migrator::migrations().len()
    );
}

/// Waiting for another instance's migrations has a limit (`DB_MIGRATION_LOCK_TIMEOUT_SECS`),
/// and the refusal names the holder: its pid, application_name and since when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_the_migration_lock_is_bounded_and_names_the_holder() {
    let test_db = TestDb::new(Backend::Postgres).await;
    let mut holder = PgConnection::connect(&format!(
        "{}&application_name=stuck-migrator",
        test_db.url()
    ))
    .await
    .unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    let config = test_config(test_db.url(), &[("DB_MIGRATION_LOCK_TIMEOUT_SECS", "1")]);
    let error = tokio::time::timeout(std::time::Duration::from_secs(20), api::build(config))
        .await
        .expect("gives up (before: waited for as long as the holder lived)")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains(&format!("pid {pid}"))
            && error.contains("stuck-migrator")
            && error.contains("connected since")
            && error.contains("DB_MIGRATION_LOCK_TIMEOUT_SECS"),
        "{error}"
    );
    holder.close().await.unwrap();
}
