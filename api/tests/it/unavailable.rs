//! When the database cannot answer in time, callers get 503 `database_unavailable` with
//! `Retry-After`, never a 500 or a hang; and the service recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Backend, TestApp, admin_connection, assert_problem, lock_users};
use sea_orm::ConnectionTrait;
use sea_orm::sqlx::{self, Executor};

/// The pool is exhausted when every connection's pipeline is full (here one connection, its
/// statements blocked by a table lock) and no other may open: a request then waits the acquire
/// timeout for a place and gets 503, instead of queueing without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_503_after_the_acquire_timeout() {
    let app = TestApp::with(
        Backend::Postgres,
        &[
            ("DB_MAX_CONNECTIONS", "1"),
            ("DB_MIN_CONNECTIONS", "1"),
            ("DB_ACQUIRE_TIMEOUT_SECS", "1"),
            ("DB_STATEMENT_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    let user = app.create_ok("held@example.com", "Held").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());

    let mut locker = lock_users(app.db.url()).await;
    // One request more than the pipeline holds: whichever finds no place waits the acquire
    // timeout and gets 503; the others stay blocked until the lock goes.
    let endpoint = app.app.endpoint();
    let mut requests: Vec<_> = (0..=api::db::postgres::PIPELINE_DEPTH)
        .map(|_| {
            let client = poem::test::TestClient::new(Arc::clone(&endpoint));
            let path = path.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let response = client.get(&path).send().await;
                let retry_after = response.0.headers().get("retry-after").cloned();
                let status = response.0.status().as_u16();
                let body: serde_json::Value = response.json().await.value().deserialize();
                (status, started.elapsed(), retry_after, body)
            })
        })
        .collect();
    let (first, index, _) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::select_all(requests.iter_mut()),
    )
    .await
    .expect("one request gave up waiting");
    let (status, waited, retry_after, problem) = first.unwrap();
    requests.remove(index);
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "database_unavailable");
    assert_eq!(retry_after.unwrap(), "1");
    assert!(
        waited >= Duration::from_millis(900),
        "waited for a place: {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "no hang: {waited:?}");
    let ready = app.client.get("/health/ready").send().await;
    assert_problem(ready, 503, "database_unavailable").await;

    locker.execute("ROLLBACK").await.unwrap();
    for request in requests {
        let (status, _, _, problem) = request.await.unwrap();
        assert_eq!(status, 200, "{problem}");
    }
    app.client.get(&path).send().await.assert_status_is_ok();
    app.client
        .get("/health/ready")
        .send()
        .await
        .assert_status_is_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_the_timeout_answers_503() {
    let app = TestApp::with(Backend::Postgres, &[("DB_STATEMENT_TIMEOUT_MS", "200")]).await;
    let user = app.create_ok("locked@example.com", "Locked").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());

    let mut locker = lock_users(app.db.url()).await;
    let started = Instant::now();
    let response = app.client.get(&path).send().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(response.0.headers().contains_key("retry-after"));
    assert_problem(response, 503, "database_unavailable").await;
    locker.execute("ROLLBACK").await.unwrap();

    app.client.get(&path).send().await.assert_status_is_ok();
}

/// The service's connections' backend pids.
async fn backends(database: &str) -> Vec<i32> {
    let mut admin = admin_connection().await;
    let pids: Vec<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    pids.into_iter().map(|(pid,)| pid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_by_the_server_are_replaced() {
    let app = TestApp::with(Backend::Postgres, &[("DB_TEST_BEFORE_ACQUIRE", "never")]).await;
    let user = app.create_ok("killed@example.com", "Killed").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let database = app.app.db().query_one_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT current_database() AS name",
    ));
    let name: String = database
        .await
        .unwrap()
        .unwrap()
        .try_get("", "name")
        .unwrap();
    let killed = backends(&name).await;
    assert!(!killed.is_empty());
    let mut admin = admin_connection().await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    // A request meeting a killed connection is a 503 (never a 500); a closed connection is
    // replaced, so most never notice.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = app.client.get(&path).send().await;
        let status = response.0.status().as_u16();
        statuses.push(status);
        if status == 503 {
            assert_problem(response, 503, "database_unavailable").await;
        } else {
            assert_eq!(status, 200, "{statuses:?}");
        }
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    let now = backends(&name).await;
    assert!(!now.is_empty(), "the service reconnected");
    assert!(
        now.iter().all(|pid| !killed.contains(pid)),
        "every connection was replaced: before {killed:?}, now {now:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_request_timeout_answers_503_and_its_work_is_dropped() {
    let app = TestApp::with(
        Backend::Postgres,
        &[
            ("HTTP_REQUEST_TIMEOUT_SECS", "1"),
            ("DB_STATEMENT_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    let user = app.create_ok("slow@example.com", "Slow").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());

    let mut locker = lock_users(app.db.url()).await;
    let started = Instant::now();
    let response = app.client.get(&path).send().await;
    let waited = started.elapsed();
    assert!(response.0.headers().contains_key("retry-after"));
    assert_problem(response, 503, "processing_timeout").await;
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "answered at the request timeout, not the statement's: {waited:?}"
    );
    locker.execute("ROLLBACK").await.unwrap();
    app.client.get(&path).send().await.assert_status_is_ok();
}
