//! PostgreSQL's pipelined connections: a pipeline runs its statements in order, so whatever
//! shares a connection with a blocked statement waits as long as it does.

use std::sync::Arc;
use std::time::Duration;

use api::config::Config;
use api::db::{Operation, PgServer, Pipelines};

use crate::common::{Backend, TestApp, TestDb, admin_connection, eventually};
use sea_orm::sqlx::{self, Connection, Executor, PgConnection};
use serde_json::json;

/// Reads take their own connections: a write held by a row lock (or waiting for its commit's
/// WAL flush) never holds up a read queued behind it; other writes take the other write
/// connections. Round robin over shared connections put a read behind the update within a few
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_other_writes_do_not_queue_behind_a_blocked_write() {
    // The shipped pool (5 warm connections); statements may wait long, so a read behind the
    // update would wait for the lock rather than fail.
    let app = TestApp::with(Backend::Postgres, &[("DB_STATEMENT_TIMEOUT_MS", "60000")]).await;
    let held = app.create_ok("held@example.com", "Held").await;
    let free = app.create_ok("free@example.com", "Free").await;
    let held_id: uuid::Uuid = held["id"].as_str().unwrap().parse().unwrap();

    let mut locker = PgConnection::connect(app.db.url()).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(held_id)
        .execute(&mut locker)
        .await
        .unwrap();
    let update = tokio::spawn({
        let client = poem::test::TestClient::new(app.app.endpoint());
        let path = format!("/api/v1/users/{held_id}");
        async move {
            let response = client
                .patch(&path)
                .body_json(&json!({ "name": "Updated" }))
                .send()
                .await;
            response.0.status().as_u16()
        }
    });
    let database = app.db.name().to_owned();
    eventually("the update waiting for the row lock", 10, || {
        let database = database.clone();
        async move {
            let mut admin = admin_connection().await;
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND wait_event_type = 'Lock'",
            )
            .bind(&database)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            waiting == 1
        }
    })
    .await;

    let free_path = format!("/api/v1/users/{}", free["id"].as_str().unwrap());
    for i in 0..20 {
        // A bound, not a pace: a read behind the update would wait a minute.
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            app.client.get(&free_path).send().await
        });
        read.await
            .expect("a read queued behind the blocked update")
            .assert_status_is_ok();
        let email = format!("other{i}@example.com");
        let create = tokio::time::timeout(Duration::from_secs(10), app.create(&email, "Other"));
        create
            .await
            .expect("a create queued behind the blocked update")
            .assert_status(poem::http::StatusCode::CREATED);
    }
    assert!(!update.is_finished(), "the update still waits for the lock");

    locker.execute("ROLLBACK").await.unwrap();
    assert_eq!(update.await.unwrap(), 200);
}

/// The service's own pipelined connections on a fresh database, with its default settings
/// (a 5 s statement timeout).
async fn pipelines(db: &TestDb) -> Pipelines {
    let url = db.url().to_owned();
    let config = Config::from_lookup(|name| (name == "DATABASE_URL").then(|| url.clone())).unwrap();
    let server = PgServer::parse(&url, &config.application_name).unwrap();
    Pipelines::connect(server, &config.pool).await.unwrap()
}

/// Lists and name searches have connections of their own: a slow one never runs ahead of a
/// read by id. (With one read lane, every read queued behind a 0.3 s search: GET by id fell
/// from 17.8k to 479 req/s with a single client searching.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_list_never_delays_a_read_by_id() {
    let db = TestDb::new(Backend::Postgres).await;
    let pipelines = Arc::new(pipelines(&db).await);
    let list = tokio::spawn({
        let pipelines = Arc::clone(&pipelines);
        async move {
            pipelines
                .query(Operation::ListUsers.lane(), "SELECT pg_sleep(3)", &[])
                .await
        }
    });
    eventually("the slow list running", 10, || sleeping(db.name())).await;
    for _ in 0..20 {
        let read = pipelines.query(Operation::FindUserById.lane(), "SELECT 1", &[]);
        tokio::time::timeout(Duration::from_secs(1), read)
            .await
            .expect("a read by id queued behind the slow list")
            .unwrap();
    }
    assert!(!list.is_finished(), "the list still runs");
    list.await.unwrap().unwrap();
}

/// A pipeline whose head statement has been answered nothing for a while takes no new
/// statements: they go to another connection of the lane (opened for them), so a statement
/// held by a lock or a slow plan delays only what was already behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pipeline_takes_no_new_statements() {
    let db = TestDb::new(Backend::Postgres).await;
    let pipelines = Arc::new(pipelines(&db).await);
    let lane = Operation::FindUserById.lane();
    let slow = tokio::spawn({
        let pipelines = Arc::clone(&pipelines);
        async move { pipelines.query(lane, "SELECT pg_sleep(3)", &[]).await }
    });
    eventually("the slow statement running", 10, || sleeping(db.name())).await;
    // What was sent before the pipeline counted as stalled waits behind it; nothing after.
    let mut answered = 0;
    for _ in 0..20 {
        let read = pipelines.query(lane, "SELECT 1", &[]);
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(500), read).await {
            result.unwrap();
            answered += 1;
        }
    }
    assert!(
        answered >= 19,
        "{answered} of 20 reads answered beside the slow one"
    );
    assert!(!slow.is_finished(), "the slow statement still runs");
    slow.await.unwrap().unwrap();
}

/// Whether a `pg_sleep` runs in `database`.
async fn sleeping(database: &str) -> bool {
    let mut admin = admin_connection().await;
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_stat_activity \
         WHERE datname = $1 AND state = 'active' AND query LIKE 'SELECT pg_sleep%'",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .unwrap()
}
