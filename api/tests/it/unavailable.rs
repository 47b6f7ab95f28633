//! When the database cannot answer in time, callers get 503 `database_unavailable` with
//! `Retry-After`, never a 500 or a hang; and the service recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{Backend, TestApp, admin_connection, assert_problem, lock_users};
use sea_orm::sqlx::{self, Executor};

/// Backends stopped with SIGSTOP, resumed when dropped (a failing test leaves none stopped).
struct Frozen(Vec<i32>);

impl Frozen {
    fn stop(pids: Vec<i32>) -> Self {
        assert!(!pids.is_empty());
        signal("STOP", &pids);
        Self(pids)
    }

    /// Resumes them; their pids.
    fn thaw(mut self) -> Vec<i32> {
        let pids = std::mem::take(&mut self.0);
        signal("CONT", &pids);
        pids
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            signal("CONT", &self.0);
        }
    }
}

fn signal(signal: &str, pids: &[i32]) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(i32::to_string))
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}");
}

/// What one request got, and how long it took.
struct Answer {
    status: u16,
    took: Duration,
    retry_after: Option<String>,
    code: Option<String>,
}

/// Sends `count` GETs of each path at once and waits for every answer.
async fn requests_at_once(app: &TestApp, paths: &[String], count: usize) -> Vec<Answer> {
    let endpoint = app.app.endpoint();
    let requests: Vec<_> = paths
        .iter()
        .flat_map(|path| std::iter::repeat_n(path.clone(), count))
        .map(|path| {
            let client = poem::test::TestClient::new(Arc::clone(&endpoint));
            tokio::spawn(async move {
                let started = Instant::now();
                let response = client.get(&path).send().await;
                let status = response.0.status().as_u16();
                let retry_after = response
                    .0
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned());
                let body: serde_json::Value = response.json().await.value().deserialize();
                Answer {
                    status,
                    took: started.elapsed(),
                    retry_after,
                    code: body["code"].as_str().map(str::to_owned),
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

/// A table lock held longer than any bound (the numbers: 1 s acquire timeout, 2 s
/// statement timeout): every caller answers within the acquire timeout plus the statement
/// timeout plus a second, 503 `database_unavailable` with `Retry-After`, never a 500 and never
/// after the lock. Statements queued behind the blocked one on its pipeline used to get their
/// own statement timeout each, in turn (5.5 s, then 200 once the lock went). With one
/// connection, whoever finds its pipeline stalled waits the acquire timeout, client-side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_table_lock_every_caller_answers_within_its_bounds() {
    for max_connections in ["50", "1"] {
        let app = TestApp::with(
            Backend::Postgres,
            &[
                ("DB_MAX_CONNECTIONS", max_connections),
                ("DB_MIN_CONNECTIONS", "1"),
                ("DB_ACQUIRE_TIMEOUT_SECS", "1"),
                ("DB_STATEMENT_TIMEOUT_MS", "2000"),
            ],
        )
        .await;
        let user = app.create_ok("held@example.com", "Held").await;
        let paths = [
            "/api/v1/users?limit=5".to_owned(),
            format!("/api/v1/users/{}", user["id"].as_str().unwrap()),
        ];

        let mut locker = lock_users(app.db.url()).await;
        let answers = requests_at_once(&app, &paths, 12).await;
        // Every answer came while the lock was still held.
        locker.execute("ROLLBACK").await.unwrap();
        for answer in &answers {
            assert_eq!(answer.status, 503, "{max_connections} connections");
            assert_eq!(answer.code.as_deref(), Some("database_unavailable"));
            assert_eq!(answer.retry_after.as_deref(), Some("1"));
            assert!(
                answer.took < Duration::from_secs(4),
                "{max_connections} connections: answered after {:?}",
                answer.took
            );
        }
        for path in &paths {
            app.client.get(path).send().await.assert_status_is_ok();
        }
        app.client
            .get("/health/ready")
            .send()
            .await
            .assert_status_is_ok();
    }
}

/// A database whose backends stop answering (SIGSTOP: a host behind a partition that drops
/// packets) enforces no `statement_timeout`: the bound is kept client-side. A request costs at
/// most the statement timeout plus a second (never the 30 s request timeout), the silent
/// connections are replaced, and the service answers again without waiting for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_that_stop_answering_cost_a_bounded_wait_and_are_replaced() {
    let app = TestApp::with(
        Backend::Postgres,
        &[
            ("DB_ACQUIRE_TIMEOUT_SECS", "1"),
            ("DB_STATEMENT_TIMEOUT_MS", "2000"),
            ("HTTP_REQUEST_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let user = app.create_ok("frozen@example.com", "Frozen").await;
    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let frozen = Frozen::stop(backends(app.db.name()).await);
    let answers = requests_at_once(&app, std::slice::from_ref(&path), 8).await;
    let first_after = Instant::now();
    let after = app.client.get(&path).send().await.0.status().as_u16();
    let after_took = first_after.elapsed();
    let now = backends(app.db.name()).await;
    let frozen = frozen.thaw();
    for answer in &answers {
        assert!(
            answer.took < Duration::from_secs(4),
            "answered after {:?} (status {})",
            answer.took,
            answer.status
        );
        assert!(
            matches!(answer.status, 200 | 503),
            "status {} ({:?})",
            answer.status,
            answer.code
        );
    }
    assert_eq!(after, 200, "a request after the silent ones is served");
    assert!(after_took < Duration::from_secs(1), "{after_took:?}");
    assert!(
        now.iter().any(|pid| !frozen.contains(pid)),
        "new connections were opened: before {frozen:?}, now {now:?}"
    );
    app.client.get(&path).send().await.assert_status_is_ok();
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
    let name = app.db.name().to_owned();
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
