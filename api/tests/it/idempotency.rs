//! `Idempotency-Key` on create and update: a retry of the same request is answered as the first
//! was, on any instance, and writes nothing; another request under the key is 422; a repeat
//! while the first runs is 409 with `Retry-After`; a client that hung up and retries gets what
//! its first request did.

use std::time::Duration;

use api::http::auth::Principal;
use api::http::idempotency::IdempotencyKey;
use api::users::idempotency::{KeyClaim, KeyedWrite};
use api::users::repository::{NewUser, UserRepository};
use poem::http::StatusCode;
use poem::test::{TestClient, TestResponse};
use sea_orm::sqlx::{self, Connection, PgConnection};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::binary::Binary;
use crate::common::{
    Backend, TestApp, TestDb, assert_invalid, assert_problem, body, eventually, test_config,
};

on_every_backend!(
    a_retried_create_is_answered_as_the_first_was,
    a_retried_create_answers_the_user_as_created,
    a_retried_update_is_answered_as_the_first_was,
    bad_keys_are_refused_and_change_nothing,
    an_expired_key_runs_again_and_is_purged
);

const KEY: &str = "0190a7a2-6d0e-7c2e-9f4a-1b2c3d4e5f60";

/// A response's status, headers of interest and body, to compare two answers whole.
async fn answer(response: TestResponse) -> (u16, [Option<String>; 3], Value) {
    let status = response.0.status().as_u16();
    let header = |name: &str| {
        response
            .0
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let headers = [
        header("location"),
        header("etag"),
        header("consistency-token"),
    ];
    (status, headers, body(response).await)
}

type Client = TestClient<std::sync::Arc<poem::endpoint::BoxEndpoint<'static>>>;

async fn create_keyed(client: &Client, key: &str, email: &str) -> TestResponse {
    client
        .post("/api/v1/users")
        .header("Idempotency-Key", key)
        .body_json(&json!({ "email": email, "name": "Ada" }))
        .send()
        .await
}

/// The claim of `write` under `key` by a client without a token, as the service makes it.
fn claim_of(key: &str, write: &KeyedWrite<'_>) -> KeyClaim {
    let key = IdempotencyKey::parse(key.to_owned()).unwrap();
    KeyClaim::new(
        &Principal::Client(None),
        &key,
        write,
        Duration::from_secs(1),
    )
}

/// A write's key lock, held on a connection of its own as a running write of that key holds
/// it.
struct HeldKeyLock {
    connection: PgConnection,
    lock: i64,
}

impl HeldKeyLock {
    async fn take(url: &str, write: &KeyedWrite<'_>) -> Self {
        let mut connection = PgConnection::connect(url).await.unwrap();
        let lock = claim_of(KEY, write).lock;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock)
            .execute(&mut connection)
            .await
            .unwrap();
        Self { connection, lock }
    }

    async fn release(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.lock)
            .execute(&mut self.connection)
            .await
            .unwrap();
    }
}

/// How many users the database holds.
async fn count_users(app: &TestApp) -> usize {
    let page = body(app.client.get("/api/v1/users?limit=200").send().await).await;
    page["items"].as_array().unwrap().len()
}

async fn a_retried_create_is_answered_as_the_first_was(backend: Backend) {
    let app = TestApp::with(backend, &[("API_TOKENS", "writer-1,writer-2")]).await;
    let send = |token: &'static str, key: &'static str, email: &'static str| {
        app.client
            .post("/api/v1/users")
            .header("Authorization", format!("Bearer {token}"))
            .header("Idempotency-Key", key)
            .body_json(&json!({ "email": email, "name": "Ada" }))
            .send()
    };
    let first = answer(send("writer-1", KEY, "ada@example.com").await).await;
    assert_eq!(first.0, 201);
    for headers in &first.1 {
        assert!(headers.is_some(), "{first:?}");
    }
    let again = answer(send("writer-1", KEY, "ada@example.com").await).await;
    assert_eq!(
        (again.0, &again.1[..2], &again.2),
        (first.0, &first.1[..2], &first.2),
        "the same status, Location, ETag and body"
    );
    assert!(again.1[2].is_some(), "a Consistency-Token");

    // The key answered another request: refused, and nothing written.
    let reused = send("writer-1", KEY, "bob@example.com").await;
    assert_problem(reused, 422, "idempotency_key_reused").await;
    // Keys are the caller's: another token's same key is its own request, which runs.
    let other = send("writer-2", KEY, "ada@example.com").await;
    assert_problem(other, 409, "email_taken").await;
    let page = app
        .client
        .get("/api/v1/users")
        .header("Authorization", "Bearer writer-1")
        .send()
        .await;
    let page = body(page).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
}

/// The user a create made may change or go; a retry of the create still answers it as it was
/// created, and creates nothing.
async fn a_retried_create_answers_the_user_as_created(backend: Backend) {
    let app = TestApp::new(backend).await;
    for (key, gone) in [("renamed", false), ("deleted", true)] {
        let email = format!("{key}@example.com");
        let first = answer(create_keyed(&app.client, key, &email).await).await;
        assert_eq!(first.0, 201);
        let location = first.1[0].clone().unwrap();
        let changed = if gone {
            app.client.delete(&location).send().await
        } else {
            let rename = json!({ "name": "Ada Lovelace" });
            app.client.patch(&location).body_json(&rename).send().await
        };
        assert!(changed.0.status().is_success(), "{key}");
        let again = answer(create_keyed(&app.client, key, &email).await).await;
        assert_eq!(
            (again.0, &again.1[..2], &again.2),
            (first.0, &first.1[..2], &first.2),
            "{key}: the first answer"
        );
        let reused = create_keyed(&app.client, key, "other@example.com").await;
        assert_problem(reused, 422, "idempotency_key_reused").await;
    }
    assert_eq!(count_users(&app).await, 1, "the renamed user only");
}

async fn a_retried_update_is_answered_as_the_first_was(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("ada@example.com", "Ada").await;
    let id = user["id"].as_str().unwrap();
    let patch = |key: Option<&'static str>, name: &'static str| {
        let mut request = app
            .client
            .patch(format!("/api/v1/users/{id}"))
            .header("If-Match", "\"1\"");
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.body_json(&json!({ "name": name })).send()
    };
    let first = answer(patch(Some(KEY), "Ada Lovelace").await).await;
    assert_eq!(first.0, 200);
    assert_eq!(first.2["version"], 2);
    // Without the key the retry fails on the version it wrote itself; with it, the first's
    // answer.
    assert_problem(patch(None, "Ada Lovelace").await, 412, "version_mismatch").await;
    let again = answer(patch(Some(KEY), "Ada Lovelace").await).await;
    assert_eq!(
        (again.0, &again.1[1], &again.2),
        (200, &first.1[1], &first.2)
    );
    assert_problem(
        patch(Some(KEY), "Countess").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    let now = body(app.client.get(format!("/api/v1/users/{id}")).send().await).await;
    assert_eq!(now, first.2, "written once");
}

async fn bad_keys_are_refused_and_change_nothing(backend: Backend) {
    let app = TestApp::new(backend).await;
    let long = "k".repeat(256);
    for key in ["", "two words", long.as_str()] {
        let refused = create_keyed(&app.client, key, "ada@example.com").await;
        assert_invalid(refused, "Idempotency-Key").await;
    }
    // Not text at all: refused, where poem-openapi would read it as absent and write unkeyed.
    let refused = app
        .client
        .post("/api/v1/users")
        .header(
            "Idempotency-Key",
            poem::http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body_json(&json!({ "email": "ada@example.com", "name": "Ada" }))
        .send()
        .await;
    assert_problem(refused, 400, "invalid_request").await;
    assert_eq!(count_users(&app).await, 0);
    // The longest key is a key.
    let longest = "k".repeat(255);
    create_keyed(&app.client, &longest, "ada@example.com")
        .await
        .assert_status(StatusCode::CREATED);
}

/// Past its time a key is forgotten: a repeat runs again; the purge removes expired keys and
/// keeps live ones.
async fn an_expired_key_runs_again_and_is_purged(backend: Backend) {
    let app = TestApp::new(backend).await;
    let user = app.create_ok("ada@example.com", "Ada").await;
    let id = user["id"].as_str().unwrap();
    let patch = |key: &'static str| {
        app.client
            .patch(format!("/api/v1/users/{id}"))
            .header("Idempotency-Key", key)
            .body_json(&json!({ "name": "Ada Lovelace" }))
            .send()
    };
    assert_eq!(body(patch(KEY).await).await["version"], 2);
    assert_eq!(body(patch("live").await).await["version"], 3);
    let direct = sea_orm::Database::connect(app.db.url()).await.unwrap();
    let backend = direct.get_database_backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    let expire = |key_hash: uuid::Uuid| {
        sea_orm::ConnectionTrait::execute_raw(
            &direct,
            sea_orm::Statement::from_sql_and_values(
                backend,
                format!(
                    "UPDATE idempotency_keys SET expires_at_secs = 0 WHERE key_hash = {placeholder}"
                ),
                [key_hash.into()],
            ),
        )
    };
    let changes = api::users::repository::UserChanges {
        email: None,
        name: Some("Ada Lovelace".into()),
    };
    let precondition = api::users::repository::Precondition::Any;
    let hash = |key: &str| claim_of(key, &changes.keyed(id.parse().unwrap(), &precondition)).hash;
    assert_eq!(expire(hash(KEY)).await.unwrap().rows_affected(), 1);
    assert_eq!(body(patch(KEY).await).await["version"], 4, "ran again");
    assert_eq!(body(patch("live").await).await["version"], 3, "replayed");

    assert_eq!(expire(hash("live")).await.unwrap().rows_affected(), 1);
    let db = api::db::Database::connect(&test_config(app.db.url(), &[]))
        .await
        .unwrap();
    UserRepository::new(&db)
        .purge_idempotency_keys()
        .await
        .unwrap();
    let left = sea_orm::ConnectionTrait::query_all_raw(
        &direct,
        sea_orm::Statement::from_string(backend, "SELECT key_hash FROM idempotency_keys"),
    )
    .await
    .unwrap();
    let left: Vec<uuid::Uuid> = left
        .iter()
        .map(|row| row.try_get("", "key_hash").unwrap())
        .collect();
    assert_eq!(
        left,
        vec![hash(KEY)],
        "the expired key purged, the live one kept"
    );
}

/// Two instances of one database: a key used on one is answered on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_answered_on_the_other_instance() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut clients = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..2 {
        let app = api::build(test_config(db.url(), &[])).await.unwrap();
        clients.push(TestClient::new(app.endpoint()));
        apps.push(app);
    }
    let mut answers = Vec::new();
    for client in &clients {
        answers.push(answer(create_keyed(client, KEY, "ada@example.com").await).await);
    }
    let (first, again) = (&answers[0], &answers[1]);
    assert_eq!(first.0, 201);
    assert_eq!(
        (again.0, &again.1[..2], &again.2),
        (first.0, &first.1[..2], &first.2)
    );
}

/// Eight requests at once with one key: one user, and every answer is that user's 201 or a
/// 409 `idempotency_in_progress` with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_create_one_user() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut apps = Vec::new();
    for _ in 0..2 {
        apps.push(api::build(test_config(db.url(), &[])).await.unwrap());
    }
    let requests: Vec<_> = (0..8)
        .map(|n| {
            let client = TestClient::new(apps[n % 2].endpoint());
            tokio::spawn(async move {
                let response = create_keyed(&client, KEY, "ada@example.com").await;
                let retry_after = response.0.headers().contains_key("retry-after");
                (
                    response.0.status().as_u16(),
                    retry_after,
                    body(response).await,
                )
            })
        })
        .collect();
    let mut ids = Vec::new();
    for request in requests {
        let (status, retry_after, body) = request.await.unwrap();
        match status {
            201 => ids.push(body["id"].as_str().unwrap().to_owned()),
            409 => {
                assert_eq!(body["code"], "idempotency_in_progress", "{body}");
                assert!(retry_after);
            }
            _ => panic!("{status}: {body}"),
        }
    }
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let mut admin = PgConnection::connect(db.url()).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(users, 1);
}

/// While a request with the key runs (its lock held), a repeat is 409 with `Retry-After` and
/// writes nothing; once it ends, the repeat runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_the_first_runs_is_told_to_retry() {
    let app = TestApp::new(Backend::Postgres).await;
    let new = NewUser {
        email: "ada@example.com".into(),
        name: "Ada".into(),
    };
    let running = HeldKeyLock::take(app.db.url(), &new.keyed()).await;
    let repeat = create_keyed(&app.client, KEY, "ada@example.com").await;
    assert!(repeat.0.headers().contains_key("retry-after"));
    assert_problem(repeat, 409, "idempotency_in_progress").await;
    assert_eq!(count_users(&app).await, 0);
    running.release().await;
    create_keyed(&app.client, KEY, "ada@example.com")
        .await
        .assert_status(StatusCode::CREATED);
}

/// A client sends a keyed create and hangs up before the answer (its write held behind a
/// lock meanwhile); the write goes on. Its retry gets 201 with that user, not 409
/// `email_taken`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_and_retries_gets_the_first_user() {
    let db = TestDb::new(Backend::Postgres).await;
    let service = Binary::start(db.url(), &[], None).await;
    let request = |key: &str| {
        let body = json!({ "email": "ada@example.com", "name": "Ada" }).to_string();
        format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Idempotency-Key: {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let mut locker = crate::common::lock_users(db.url()).await;
    let mut client = TcpStream::connect(service.public).await.unwrap();
    client.write_all(request(KEY).as_bytes()).await.unwrap();
    let admin = sqlx::PgPool::connect(db.url()).await.unwrap();
    let count = |sql: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    eventually("the create waiting on the lock", 10, || async {
        count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE '%pg_try_advisory_xact_lock%'",
        )
        .await
            == 1
    })
    .await;
    drop(client);
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    eventually("the first request's user", 10, || async {
        count("SELECT count(*) FROM users").await == 1
    })
    .await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users")
        .fetch_one(&admin)
        .await
        .unwrap();

    let retried = crate::common::binary::exchange(service.public, &request(KEY))
        .await
        .unwrap();
    assert!(retried.starts_with("HTTP/1.1 201"), "{retried}");
    assert!(retried.contains(&id.to_string()), "{retried}");
    service.stop().await;
}

/// A keyed update that writes nothing says why: its key's lock held elsewhere (409, the user
/// as it was), the user's version (412) or the user gone (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_update_that_writes_nothing_says_why() {
    let app = TestApp::new(Backend::Postgres).await;
    let user = app.create_ok("ada@example.com", "Ada").await;
    let id: uuid::Uuid = user["id"].as_str().unwrap().parse().unwrap();
    let patch = |if_match: &'static str, id: uuid::Uuid| {
        app.client
            .patch(format!("/api/v1/users/{id}"))
            .header("If-Match", if_match)
            .header("Idempotency-Key", KEY)
            .body_json(&json!({ "name": "Ada Lovelace" }))
            .send()
    };
    let changes = api::users::repository::UserChanges {
        email: None,
        name: Some("Ada Lovelace".into()),
    };
    let precondition = api::users::repository::Precondition::OneOf(vec![1]);
    let running = HeldKeyLock::take(app.db.url(), &changes.keyed(id, &precondition)).await;
    assert_problem(patch("\"1\"", id).await, 409, "idempotency_in_progress").await;
    running.release().await;
    let now = body(app.client.get(format!("/api/v1/users/{id}")).send().await).await;
    assert_eq!(now, user, "unchanged");
    assert_problem(patch("\"7\"", id).await, 412, "version_mismatch").await;
    assert_problem(
        patch("\"1\"", uuid::Uuid::now_v7()).await,
        404,
        "user_not_found",
    )
    .await;
}
