//! Reads on a streaming replica (`DATABASE_READ_URL`), against a real one: each test has a
//! primary and a replica of its own (`scripts/pg-replica.sh pair`), so it can delay, stop
//! and restart them. Reads land on the replica; a `Consistency-Token` reads its write however
//! far behind the replica is; a replica past `DB_READ_MAX_LAG_MS`, stopped, or back is
//! followed without a failed read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::App;
use poem::endpoint::BoxEndpoint;
use poem::test::{TestClient, TestResponse};
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::{Value, json};

use crate::common::binary::{Binary, exchange};
use crate::common::replica::{ReplicaPair, Server};
use crate::common::{body, test_config};

struct Service {
    _app: App,
    client: TestClient<Arc<BoxEndpoint<'static>>>,
}

/// The service on the pair's primary (migrating it), reading from its replica.
async fn service(pair: &ReplicaPair, max_lag_ms: &str) -> Service {
    let replica = pair.replica_url();
    let config = test_config(
        &pair.primary_url(),
        &[
            ("DATABASE_READ_URL", replica.as_str()),
            ("DB_READ_MAX_LAG_MS", max_lag_ms),
        ],
    );
    let app = api::build(config).await.expect("build the app");
    let client = TestClient::new(app.endpoint());
    Service { _app: app, client }
}

/// The primary's WAL position now.
async fn primary_position(pair: &ReplicaPair) -> String {
    let mut primary = PgConnection::connect(&pair.primary_url()).await.unwrap();
    let position: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    let _ = primary.close().await;
    position
}

fn token_of(response: &TestResponse) -> String {
    response
        .0
        .headers()
        .get("consistency-token")
        .expect("a write answers with a Consistency-Token")
        .to_str()
        .unwrap()
        .to_owned()
}

impl Service {
    /// Creates a user; its JSON and the write's token.
    async fn create(&self, email: &str) -> (Value, String) {
        let response = self
            .client
            .post("/api/v1/users")
            .body_json(&json!({ "email": email, "name": "Replicated" }))
            .send()
            .await;
        response.assert_status(poem::http::StatusCode::CREATED);
        let token = token_of(&response);
        (body(response).await, token)
    }

    /// GET `path` with the token if given: status and body.
    async fn read(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(path);
        if let Some(token) = token {
            request = request.header("Consistency-Token", token);
        }
        let response = request.send().await;
        let status = response.0.status().as_u16();
        (status, body(response).await)
    }
}

fn user_path(user: &Value) -> String {
    format!("/api/v1/users/{}", user["id"].as_str().unwrap())
}

fn lookup_path(email: &str) -> String {
    format!("/api/v1/users/lookup?email={email}")
}

fn listed(page: &Value, user: &Value) -> bool {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|item| item["id"] == user["id"])
}

/// Reads by id that the replica answered, in the binary's `/metrics`.
const ON_REPLICA: &str = r#"database_query_duration_seconds_count{operation="user.find_by_id",outcome="ok",pool="replica"}"#;

/// The real binary on the pair's primary, reading from its replica (lag limit 1 s), with
/// `settings` besides.
async fn binary_reading_from(pair: &ReplicaPair, settings: &[(&str, &str)]) -> Binary {
    let replica = pair.replica_url();
    let mut env = vec![
        ("DATABASE_READ_URL", replica.as_str()),
        ("DB_READ_MAX_LAG_MS", "1000"),
    ];
    env.extend_from_slice(settings);
    Binary::start(&pair.primary_url(), &env, None).await
}

/// Creates a user through `service` and waits until the replica has it: the request that reads
/// it by id.
async fn replicated_user(service: &Binary, pair: &ReplicaPair, email: &str) -> String {
    let created = service.create(email, "Replicated").await;
    let header = |name: &str| {
        created
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {created}"))
            .to_owned()
    };
    pair.replayed(&header("consistency-token:")).await;
    let location = header("location:");
    format!("GET {location} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

/// With the primary stopped, what was replicated is still read: reads (by id, by email,
/// lists) are answered by the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_land_on_the_replica() {
    let pair = ReplicaPair::start();
    let service = service(&pair, "1000").await;
    let (user, token) = service.create("replicated@example.com").await;
    pair.replayed(&token).await;

    pair.stop(Server::Primary);
    let (status, found) = service.read(&user_path(&user), None).await;
    assert_eq!((status, &found), (200, &user));
    let (status, found) = service
        .read(&lookup_path("replicated@example.com"), None)
        .await;
    assert_eq!((status, &found), (200, &user));
    let (status, page) = service.read("/api/v1/users", None).await;
    assert_eq!(status, 200, "{page}");
    assert!(listed(&page, &user), "{page}");
    // A write needs the primary: 503, not a write on the replica.
    let response = service
        .client
        .post("/api/v1/users")
        .body_json(&json!({ "email": "late@example.com", "name": "Late" }))
        .send()
        .await;
    assert_eq!(response.0.status().as_u16(), 503);
}

/// A replica holding every commit back 5 s (within the lag limit): without the token a read
/// right after a write does not see it (it is on the replica), with the token it does, for
/// every kind of read and every kind of write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_its_write_on_a_lagging_replica() {
    let pair = ReplicaPair::start();
    pair.delay_replay(Duration::from_secs(5)).await;
    let service = service(&pair, "60000").await;
    // The migrations reach the replica 5 s later.
    pair.replayed(&primary_position(&pair).await).await;

    let (user, created) = service.create("mine@example.com").await;
    let (path, lookup) = (user_path(&user), lookup_path("mine@example.com"));
    assert_eq!(
        service.read(&path, None).await.0,
        404,
        "read on the replica"
    );
    assert_eq!(
        service.read(&path, Some(&created)).await,
        (200, user.clone())
    );
    assert_eq!(service.read(&lookup, None).await.0, 404);
    assert_eq!(
        service.read(&lookup, Some(&created)).await,
        (200, user.clone())
    );
    let (_, page) = service.read("/api/v1/users", None).await;
    assert!(!listed(&page, &user), "{page}");
    let (_, page) = service.read("/api/v1/users", Some(&created)).await;
    assert!(listed(&page, &user), "{page}");

    let response = service
        .client
        .patch(&path)
        .body_json(&json!({ "name": "Renamed" }))
        .send()
        .await;
    response.assert_status_is_ok();
    let updated = token_of(&response);
    let (status, found) = service.read(&path, Some(&updated)).await;
    assert_eq!((status, found["name"].as_str()), (200, Some("Renamed")));

    let response = service.client.delete(&path).send().await;
    response.assert_status(poem::http::StatusCode::NO_CONTENT);
    let deleted = token_of(&response);
    assert_eq!(service.read(&path, Some(&deleted)).await.0, 404);
    // The token is the primary's position after the commit: once the replica replays it, the
    // replica has the write too.
    pair.replayed(&deleted).await;
    assert_eq!(service.read(&path, None).await.0, 404);
}

/// A replica that stops applying WAL falls past `DB_READ_MAX_LAG_MS` (200 ms) with the next
/// commit, and reads go to the primary, which has the write the replica lacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_the_lag_limit_sends_reads_to_the_primary() {
    let pair = ReplicaPair::start();
    let service = service(&pair, "200").await;
    pair.replayed(&primary_position(&pair).await).await;
    pair.pause_replay().await;

    let (user, _) = service.create("held-back@example.com").await;
    let path = user_path(&user);
    let mut answered = None;
    for _ in 0..400 {
        match service.read(&path, None).await {
            (404, _) => tokio::time::sleep(Duration::from_millis(25)).await,
            other => {
                answered = Some(other);
                break;
            }
        }
    }
    assert_eq!(
        answered,
        Some((200, user)),
        "reads left the replica within 10 s"
    );
}

/// The real binary: an idle primary reads as no lag; under read load the replica stops (no
/// read fails: they go to the primary, counted as fallbacks), then comes back (reads return
/// to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopped_under_read_load_fails_no_read_and_is_used_again_once_back() {
    let pair = ReplicaPair::start();
    let service = binary_reading_from(&pair, &[]).await;
    let get = replicated_user(&service, &pair, "loaded@example.com").await;
    let fallbacks =
        |reason: &str| format!(r#"database_replica_fallbacks_total{{reason="{reason}"}}"#);
    // An idle primary, longer than the lag limit: the replica has everything, so it is not
    // behind (a lag read from replay timestamps would be the idle time, and send reads away).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered = exchange(service.public, &get).await.unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert_eq!(service.counter(ON_REPLICA).await, 1.0);
    assert_eq!(service.counter(&fallbacks("lag")).await, 0.0);
    assert_eq!(service.counter("database_replica_lag_seconds").await, 0.0);

    // Four readers until told to stop, keeping every answer that is not a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, reads) = tokio::sync::watch::channel(0_usize);
    let counted = Arc::new(counted);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, counted, get) = (Arc::clone(&stop), Arc::clone(&counted), get.clone());
            let public = service.public;
            tokio::spawn(async move {
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let answered = exchange(public, &get)
                        .await
                        .unwrap_or_else(|e| e.to_string());
                    if !answered.starts_with("HTTP/1.1 200") {
                        failed.push(answered);
                    }
                    counted.send_modify(|reads| *reads += 1);
                }
                failed
            })
        })
        .collect();
    // Returns once the readers have answered `count` more reads.
    let read_past = |count: usize| {
        let mut reads = reads.clone();
        async move {
            let target = *reads.borrow_and_update() + count;
            reads.wait_for(|reads| *reads >= target).await.unwrap();
        }
    };
    read_past(50).await;
    pair.stop(Server::Replica);
    read_past(300).await;
    let fallen_back = service.counter(&fallbacks("unavailable")).await
        + service.counter(&fallbacks("error")).await;
    assert!(fallen_back > 0.0, "reads went to the primary");

    pair.restart(Server::Replica);
    let before = service.counter(ON_REPLICA).await;
    let mut returned = false;
    for _ in 0..400 {
        read_past(10).await;
        if service.counter(ON_REPLICA).await > before {
            returned = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let failed = reader.await.unwrap();
        assert!(
            failed.is_empty(),
            "{} failed reads: {:?}",
            failed.len(),
            failed.first()
        );
    }
    assert!(returned, "reads returned to the replica");
    service.stop().await;
}

/// A replica that hangs with its connections open (suspended, as a frozen host or a network
/// dropping packets looks): a read on it waits at most a second past the statement timeout,
/// then the primary answers it, and the next reads go to the primary at once; once the replica
/// answers again, reads return to it (on new connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_costs_time_not_reads() {
    let pair = ReplicaPair::start();
    let settings = [
        ("DB_STATEMENT_TIMEOUT_MS", "500"),
        ("HTTP_REQUEST_TIMEOUT_SECS", "10"),
    ];
    let service = binary_reading_from(&pair, &settings).await;
    let get = replicated_user(&service, &pair, "frozen@example.com").await;
    let read = || async { exchange(service.public, &get).await.unwrap() };
    assert!(read().await.starts_with("HTTP/1.1 200"));
    let before = service.counter(ON_REPLICA).await;
    assert!(before >= 1.0, "read on the replica");

    pair.freeze(Server::Replica);
    for _ in 0..5 {
        let answered = read().await;
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    }
    assert!(
        service
            .counter(r#"database_replica_fallbacks_total{reason="error"}"#)
            .await
            >= 1.0,
        "the unanswered read went to the primary"
    );

    pair.thaw(Server::Replica);
    let mut returned = false;
    for _ in 0..400 {
        assert!(read().await.starts_with("HTTP/1.1 200"));
        if service.counter(ON_REPLICA).await > before {
            returned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(returned, "reads returned to the replica");
    service.stop().await;
}
