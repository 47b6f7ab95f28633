//! PostgreSQL's pipelined connections: a pipeline runs its statements in order, so whatever
//! shares a connection with a blocked statement waits as long as it does.

use std::time::Duration;

use crate::common::{Backend, TestApp, admin_connection, eventually};
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
