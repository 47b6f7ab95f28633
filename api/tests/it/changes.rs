//! The change feed (`GET /api/v1/users/changes`): every user's newest version or deletion after
//! a token, in commit order, whichever instance wrote it; tokens past the retention are 410;
//! the long poll; the feed read on a replica.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use poem::endpoint::BoxEndpoint;
use poem::test::TestClient;
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::{Value, json};

use crate::common::replica::ReplicaPair;
use crate::common::{Backend, TestApp, TestDb, assert_problem, body, test_config};

type Client = TestClient<Arc<BoxEndpoint<'static>>>;

on_every_backend!(
    the_feed_carries_newest_versions_and_deletions,
    bad_feed_parameters_are_refused,
    a_token_past_the_retention_is_gone
);

/// One page: its changes and `next`.
async fn page(client: &Client, query: &str) -> (Vec<Value>, String) {
    let response = client
        .get(format!("/api/v1/users/changes{query}"))
        .send()
        .await;
    response.assert_status_is_ok();
    let page = body(response).await;
    let changes = page["changes"].as_array().expect("changes").clone();
    let next = page["next"].as_str().expect("next").to_owned();
    (changes, next)
}

/// Follows `next` from `since` until at least `expected` changes came and then a page has none:
/// every change seen, and the token after them. PostgreSQL shows a commit once every older
/// transaction of the cluster has ended (other tests' too): pages wait for it (`wait`).
async fn drain(
    client: &Client,
    since: Option<&str>,
    limit: u32,
    expected: usize,
) -> (Vec<Value>, String) {
    let mut seen = Vec::new();
    let mut since = since.map(str::to_owned);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{expected} changes expected, seen {seen:?}"
        );
        let wait = if seen.len() < expected { 20 } else { 0 };
        let query = match &since {
            Some(token) => format!("?since={token}&limit={limit}&wait={wait}"),
            None => format!("?limit={limit}&wait={wait}"),
        };
        let (changes, next) = page(client, &query).await;
        let done = changes.is_empty() && seen.len() >= expected;
        seen.extend(changes);
        since = Some(next.clone());
        if done {
            return (seen, next);
        }
    }
}

/// The state the changes converge to: by id, the newest version and the user (`Null` when
/// deleted).
fn converge(changes: &[Value]) -> HashMap<String, (i64, Value)> {
    let mut state: HashMap<String, (i64, Value)> = HashMap::new();
    for change in changes {
        let id = change["id"].as_str().unwrap().to_owned();
        let version = change["version"].as_i64().unwrap();
        if state.get(&id).is_none_or(|(known, _)| version > *known) {
            state.insert(id, (version, change["user"].clone()));
        }
    }
    state
}

async fn the_feed_carries_newest_versions_and_deletions(backend: Backend) {
    let app = TestApp::new(backend).await;
    let (none, start) = page(&app.client, "").await;
    assert!(none.is_empty());
    let (_, again) = page(&app.client, &format!("?since={start}")).await;
    assert_eq!(again, start, "nothing changed: the same position");
    // Every token the pattern admits is a position (this one before 0): with nothing forgotten
    // yet, none is expired.
    page(&app.client, &format!("?since={}", "0".repeat(32))).await;

    let ada = app.create_ok("ada@example.com", "Ada").await;
    let bob = app.create_ok("bob@example.com", "Bob").await;
    let ada_id = ada["id"].as_str().unwrap();
    let bob_id = bob["id"].as_str().unwrap();
    let updated = app
        .client
        .patch(format!("/api/v1/users/{ada_id}"))
        .body_json(&json!({ "name": "Ada Lovelace" }))
        .send()
        .await;
    updated.assert_status_is_ok();
    let updated = body(updated).await;
    app.client
        .delete(format!("/api/v1/users/{bob_id}"))
        .send()
        .await
        .assert_status(poem::http::StatusCode::NO_CONTENT);

    for since in [Some(start.as_str()), None] {
        for limit in [1, 1000] {
            let (changes, next) = drain(&app.client, since, limit, 2).await;
            let state = converge(&changes);
            assert_eq!(state.len(), 2, "{changes:?}");
            assert_eq!(state[ada_id], (2, updated.clone()), "the newest version");
            assert_eq!(
                state[bob_id],
                (2, Value::Null),
                "the deletion, one past the last version"
            );
            let (after, same) = page(&app.client, &format!("?since={next}")).await;
            assert!(after.is_empty() && same == next, "nothing after the end");
        }
    }
    // Only what changed after a token comes after it.
    let (_, end) = drain(&app.client, None, 1000, 2).await;
    let carol = app.create_ok("carol@example.com", "Carol").await;
    let (changes, _) = drain(&app.client, Some(&end), 1000, 1).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["user"], carol);
}

async fn bad_feed_parameters_are_refused(backend: Backend) {
    let app = TestApp::new(backend).await;
    for query in [
        "?since=not-a-token",
        "?since=AAAA",
        "?limit=0",
        "?limit=1001",
        "?wait=31",
        "?wait=-1",
    ] {
        let response = app
            .client
            .get(format!("/api/v1/users/changes{query}"))
            .send()
            .await;
        assert_problem(response, 400, "invalid_request").await;
    }
}

/// A token from before a deletion the feed no longer remembers is 410 `changes_expired` (a
/// consumer following it would miss that deletion); from the start, or from a token after it,
/// the feed answers.
async fn a_token_past_the_retention_is_gone(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("gone@example.com", "Gone").await;
    let (_, before) = drain(&app.client, None, 1000, 1).await;
    let id = user["id"].as_str().unwrap();
    app.client
        .delete(format!("/api/v1/users/{id}"))
        .send()
        .await
        .assert_status(poem::http::StatusCode::NO_CONTENT);
    let (changes, after) = drain(&app.client, Some(&before), 1000, 1).await;
    assert_eq!(changes.len(), 1, "the deletion");

    // The tombstone as if deleted two hours ago; then the housekeeping's purge, keeping one.
    let direct = sea_orm::Database::connect(app.db.url()).await.unwrap();
    sea_orm::ConnectionTrait::execute_unprepared(
        &direct,
        "UPDATE user_tombstones SET deleted_at_secs = deleted_at_secs - 2 * 3600",
    )
    .await
    .unwrap();
    let db = api::db::Database::connect(&test_config(app.db.url(), &[]))
        .await
        .unwrap();
    api::users::repository::UserRepository::new(&db)
        .purge_tombstones(Duration::from_secs(3600))
        .await
        .unwrap();

    let expired = app
        .client
        .get(format!("/api/v1/users/changes?since={before}"))
        .send()
        .await;
    assert_problem(expired, 410, "changes_expired").await;
    page(&app.client, "").await;
    let (none, _) = page(&app.client, &format!("?since={after}")).await;
    assert!(none.is_empty());
}

/// An empty long poll answers when a change arrives, well before its wait; with none, after
/// its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_when_a_change_arrives() {
    let app = TestApp::new(Backend::Postgres).await;
    let (_, start) = page(&app.client, "").await;
    let started = Instant::now();
    let (nothing, same) = page(&app.client, &format!("?since={start}&wait=1")).await;
    assert!(nothing.is_empty() && same == start);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for its wait"
    );

    let client = TestClient::new(app.app.endpoint());
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let (changes, _) = page(&client, &format!("?since={start}&wait=20")).await;
        (changes, started.elapsed())
    });
    let created = app.create_ok("polled@example.com", "Polled").await;
    let (changes, waited) = poll.await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["user"], created);
    assert!(
        waited < Duration::from_secs(10),
        "answered at the change: {waited:?}"
    );
}

/// Writers on two instances of one database, updating and deleting, and a consumer following
/// the feed meanwhile through both: at the end it holds every user's newest version and every
/// deletion. (Following `updated_since` instead lost updates committed late and every deletion.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_instances_and_a_consumer_lose_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(api::build(test_config(db.url(), &[])).await.unwrap());
    }
    let clients = || -> Vec<Client> {
        apps.iter()
            .map(|app| TestClient::new(app.endpoint()))
            .collect()
    };
    let instances = clients();
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for n in 0..40 {
        let response = instances[n % 2]
            .post("/api/v1/users")
            .body_json(&json!({ "email": format!("u{n}@example.com"), "name": format!("U{n}") }))
            .send()
            .await;
        response.assert_status(poem::http::StatusCode::CREATED);
        ids.push(body(response).await["id"].as_str().unwrap().to_owned());
    }
    let ids = Arc::new(ids);
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let client = clients().swap_remove(writer % 2);
            let ids = Arc::clone(&ids);
            tokio::spawn(async move {
                for round in 0..25 {
                    let id = &ids[(writer * 5 + round) % ids.len()];
                    let request = if round % 12 == 11 {
                        client.delete(format!("/api/v1/users/{id}"))
                    } else {
                        client
                            .patch(format!("/api/v1/users/{id}"))
                            .body_json(&json!({ "name": format!("W{writer} R{round}") }))
                    };
                    let status = request.send().await.0.status().as_u16();
                    assert!([200, 204, 404].contains(&status), "{status}");
                }
            })
        })
        .collect();
    let consumer = {
        let clients = clients();
        let writers_done = Arc::clone(&writers_done);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut since: Option<String> = None;
            for turn in 0usize.. {
                let query = since.as_ref().map_or("?limit=7".to_owned(), |token| {
                    format!("?since={token}&limit=7")
                });
                let (changes, next) = page(&clients[turn % 2], &query).await;
                seen.extend(changes);
                since = Some(next);
                if writers_done.load(Ordering::SeqCst) {
                    break;
                }
            }
            (seen, since)
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);
    let (mut seen, mut since) = consumer.await.unwrap();
    let mut direct = PgConnection::connect(db.url()).await.unwrap();
    let live: Vec<(uuid::Uuid, i64)> = sqlx::query_as("SELECT id, version FROM users")
        .fetch_all(&mut direct)
        .await
        .unwrap();
    let deleted: Vec<(uuid::Uuid, i64)> = sqlx::query_as("SELECT id, version FROM user_tombstones")
        .fetch_all(&mut direct)
        .await
        .unwrap();
    assert!(!deleted.is_empty(), "the writers deleted some");
    // The last commits show once every older transaction of the cluster has ended (other
    // tests' too): follow the feed until it has caught up with the database, or fail.
    let expected = live.len() + deleted.len();
    let caught_up = |state: &HashMap<String, (i64, Value)>| {
        live.iter().chain(&deleted).all(|(id, version)| {
            state
                .get(&id.to_string())
                .is_some_and(|(v, _)| v == version)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !caught_up(&converge(&seen)) {
        assert!(Instant::now() < deadline, "the feed did not catch up");
        let token = since.clone().unwrap();
        let (changes, next) = page(&instances[0], &format!("?since={token}&limit=7&wait=1")).await;
        seen.extend(changes);
        since = Some(next);
    }
    let state = converge(&seen);
    assert_eq!(state.len(), expected);
    for (id, version) in &live {
        let (known, user) = &state[&id.to_string()];
        assert_eq!(
            (*known, user["version"].as_i64()),
            (*version, Some(*version)),
            "{id}"
        );
    }
    for (id, version) in &deleted {
        assert_eq!(
            state[&id.to_string()],
            (*version, Value::Null),
            "{id} deleted"
        );
    }
}

/// The feed's statement answers on a hot standby (its snapshot's horizon is the standby's),
/// and the service configured with the replica serves the feed with a `Consistency-Token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reads_from_a_replica() {
    let pair = ReplicaPair::start();
    let replica = pair.replica_url();
    let config = test_config(
        &pair.primary_url(),
        &[("DATABASE_READ_URL", replica.as_str())],
    );
    let app = api::build(config).await.expect("build the app");
    let client = TestClient::new(app.endpoint());
    let created = client
        .post("/api/v1/users")
        .body_json(&json!({ "email": "replica@example.com", "name": "Replica" }))
        .send()
        .await;
    created.assert_status(poem::http::StatusCode::CREATED);
    let token = created
        .0
        .headers()
        .get("consistency-token")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let response = client
        .get("/api/v1/users/changes?wait=20")
        .header("Consistency-Token", token)
        .send()
        .await;
    response.assert_status_is_ok();
    assert_eq!(body(response).await["changes"].as_array().unwrap().len(), 1);

    let statement = api::users::repository::statements::changes(
        sea_orm::DbBackend::Postgres,
        api::users::change_token::ChangeToken::START,
        100,
    );
    crate::common::eventually("the standby's feed shows the create", 10, || {
        let (sql, replica) = (statement.sql.clone(), replica.clone());
        async move {
            let mut standby = PgConnection::connect(&replica).await.unwrap();
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(0i64)
                .bind(uuid::Uuid::nil())
                .bind(100i64)
                .fetch_all(&mut standby)
                .await
                .expect("the feed's statement runs on a hot standby");
            let _ = standby.close().await;
            rows.iter()
                .any(|row| sqlx::Row::get::<Option<uuid::Uuid>, _>(row, "id").is_some())
        }
    })
    .await;
}
