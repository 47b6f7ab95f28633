//! The cache (`REDIS_URL` set), against a Redis server of each test's own and PostgreSQL:
//! hits answer without the database; two api instances on one Redis never answer older than
//! an acknowledged write, nor a deleted user; Redis stopped, paused or flushed never fails a
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use api::App;
use poem::endpoint::BoxEndpoint;
use poem::http::StatusCode;
use poem::test::TestClient;
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use crate::common::binary::{Binary, exchange};
use crate::common::redis_server::TestRedis;
use crate::common::{Backend, TestDb, eventually, lock_users, percent_encode, test_config};

/// One api instance with the cache on.
struct Instance {
    app: App,
    client: TestClient<Arc<BoxEndpoint<'static>>>,
}

impl Instance {
    async fn start(db: &TestDb, redis: &TestRedis) -> Self {
        let url = redis.url();
        let app = api::build(test_config(
            db.url(),
            &[("REDIS_URL", url.as_str()), ("CACHE_TIMEOUT_MS", "50")],
        ))
        .await
        .expect("build the app");
        let client = TestClient::new(app.endpoint());
        Self { app, client }
    }

    async fn create(&self, email: &str, name: &str) -> Value {
        let response = self
            .client
            .post("/api/v1/users")
            .body_json(&json!({ "email": email, "name": name }))
            .send()
            .await;
        response.assert_status(StatusCode::CREATED);
        response.json().await.value().deserialize()
    }

    /// GET by id: the status and, when found, the user.
    async fn get(&self, id: &str) -> (u16, Value) {
        let response = self.client.get(format!("/api/v1/users/{id}")).send().await;
        answer(response).await
    }

    async fn lookup(&self, email: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!(
                "/api/v1/users/lookup?email={}",
                percent_encode(email)
            ))
            .send()
            .await;
        answer(response).await
    }

    /// PATCH without a precondition; the user after it.
    async fn patch(&self, id: &str, changes: Value) -> Value {
        let response = self
            .client
            .patch(format!("/api/v1/users/{id}"))
            .body_json(&changes)
            .send()
            .await;
        response.assert_status(StatusCode::OK);
        response.json().await.value().deserialize()
    }

    async fn delete(&self, id: &str) {
        self.client
            .delete(format!("/api/v1/users/{id}"))
            .send()
            .await
            .assert_status(StatusCode::NO_CONTENT);
    }

    /// A GET answered within `within`, or `None`: with the table locked, only a hit answers.
    async fn get_within(&self, id: &str, within: Duration) -> Option<(u16, Value)> {
        tokio::time::timeout(within, self.get(id)).await.ok()
    }
}

async fn answer(response: poem::test::TestResponse) -> (u16, Value) {
    let status = response.0.status().as_u16();
    let body = if status == 200 {
        response.json().await.value().deserialize()
    } else {
        Value::Null
    };
    (status, body)
}

fn id_of(user: &Value) -> String {
    user["id"].as_str().unwrap().to_owned()
}

fn version_of(user: &Value) -> i64 {
    user["version"].as_i64().unwrap()
}

/// A hit answers while every statement on `users` waits for a lock: the database was not
/// asked. With the cache off these requests would wait for the lock (and fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_answer_without_the_database_and_keys_carry_no_personal_data() {
    let redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let instance = Instance::start(&db, &redis).await;
    let created = instance
        .create("Grace.Hopper@Example.com", "Grace Hopper")
        .await;
    let id = id_of(&created);

    let mut locker = lock_users(db.url()).await;
    let within = Duration::from_secs(2);
    let (status, user) = instance.get_within(&id, within).await.expect("a hit");
    assert_eq!((status, &user), (200, &created), "the create was cached");
    let not_modified = tokio::time::timeout(
        within,
        instance
            .client
            .get(format!("/api/v1/users/{id}"))
            .header("If-None-Match", "\"1\"")
            .send(),
    )
    .await
    .expect("a hit");
    not_modified.assert_status(StatusCode::NOT_MODIFIED);
    not_modified.assert_header("etag", "\"1\"");
    let (status, found) = tokio::time::timeout(within, instance.lookup("grace.hopper@EXAMPLE.com"))
        .await
        .expect("a hit, case-insensitively");
    assert_eq!((status, &found), (200, &created));
    sea_orm::sqlx::Executor::execute(&mut locker, "ROLLBACK")
        .await
        .unwrap();

    let keys: Vec<String> = redis.connection().await.keys("*").await.unwrap();
    assert!(keys.len() >= 3, "{keys:?}");
    for key in keys {
        let lower = key.to_lowercase();
        assert!(
            !lower.contains("grace") && !lower.contains("hopper") && !lower.contains("example"),
            "{key}"
        );
    }
}

/// Writes on one instance, reads on the other, hundreds of times: never an older version,
/// an email's old address finds nobody, a deleted user is gone on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_is_what_the_other_reads() {
    let redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let (a, b) = (
        Instance::start(&db, &redis).await,
        Instance::start(&db, &redis).await,
    );
    let user = a.create("mover0@example.com", "Mover").await;
    let id = id_of(&user);
    assert_eq!(b.get(&id).await.0, 200, "B caches it");
    let mut email = "mover0@example.com".to_owned();
    for round in 1..=200 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let written = if round % 10 == 0 {
            let moved = format!("Mover{round}@example.com");
            let written = writer.patch(&id, json!({ "email": moved })).await;
            assert_eq!(
                reader.lookup(&email).await.0,
                404,
                "the old address, round {round}"
            );
            email = moved;
            written
        } else {
            writer
                .patch(&id, json!({ "name": format!("Mover {round}") }))
                .await
        };
        let (status, read) = reader.get(&id).await;
        assert_eq!((status, &read), (200, &written), "round {round}");
        let (status, looked_up) = reader.lookup(&email.to_uppercase()).await;
        assert_eq!((status, &looked_up), (200, &written), "round {round}");
    }
    a.delete(&id).await;
    for instance in [&a, &b] {
        assert_eq!(instance.get(&id).await.0, 404);
        assert_eq!(instance.lookup(&email).await.0, 404);
    }
}

/// A fill is the race of cache-aside: a reader reads the row, a write commits and updates the
/// cache, then the reader stores what it read. Held open here between its database read and
/// its store, across an update and then across a delete: what it stores is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_held_open_across_a_write_never_serves_what_it_read() {
    let redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let (a, b) = (
        Instance::start(&db, &redis).await,
        Instance::start(&db, &redis).await,
    );
    let user = a.create("racer@example.com", "Racer").await;
    let id = id_of(&user);

    // Across an update: the held fill read version 1, the update stored version 2.
    let (reader, release) = read_with_its_fill_held(&b, &redis, &id).await;
    let updated = a.patch(&id, json!({ "name": "Racer 2" })).await;
    release.notify_one();
    assert_eq!(
        reader.await.unwrap(),
        StatusCode::OK,
        "it began before the update"
    );
    for instance in [&a, &b] {
        assert_eq!(instance.get(&id).await, (200, updated.clone()));
    }

    // Across a delete: the held fill read version 2, the delete left a tombstone.
    let (reader, release) = read_with_its_fill_held(&b, &redis, &id).await;
    a.delete(&id).await;
    release.notify_one();
    assert_eq!(
        reader.await.unwrap(),
        StatusCode::OK,
        "it began before the delete"
    );
    for instance in [&a, &b] {
        assert_eq!(instance.get(&id).await.0, 404);
        assert_eq!(instance.lookup("racer@example.com").await.0, 404);
    }
    assert_eq!(
        redis.get(&key_of(&id)).await.as_deref(),
        Some("D"),
        "the tombstone"
    );
}

/// A GET on `instance` that misses (its entry removed first) and has read the database when
/// this returns; its fill stores when the notify is given.
async fn read_with_its_fill_held(
    instance: &Instance,
    redis: &TestRedis,
    id: &str,
) -> (tokio::task::JoinHandle<StatusCode>, Arc<Notify>) {
    redis.del(&key_of(id)).await;
    let (held, release) = hold_next_fill(instance);
    let client = TestClient::new(instance.app.endpoint());
    let path = format!("/api/v1/users/{id}");
    let reader = tokio::spawn(async move { client.get(path).send().await.0.status() });
    held.await.unwrap();
    (reader, release)
}

/// Makes `instance`'s next fill wait: the receiver fires when it has read the database, the
/// notify lets it store.
fn hold_next_fill(instance: &Instance) -> (oneshot::Receiver<()>, Arc<Notify>) {
    let (reached, held) = oneshot::channel();
    let reached = std::sync::Mutex::new(Some(reached));
    let release = Arc::new(Notify::new());
    let wait = Arc::clone(&release);
    let cache = instance.app.cache().expect("the cache is on").clone();
    let unhook = cache.clone();
    cache.set_fill_hook(Some(Box::new(move |_| {
        let reached = reached.lock().unwrap().take();
        let wait = Arc::clone(&wait);
        let unhook = unhook.clone();
        Box::pin(async move {
            if let Some(reached) = reached {
                unhook.set_fill_hook(None);
                let _ = reached.send(());
                wait.notified().await;
            }
        })
    })));
    (held, release)
}

/// Writers and readers on both instances for seconds, on a few users: no read that began
/// after an acknowledged write returns an older version, no reader sees a version go
/// backwards, and afterwards every entry the cache trusts is the database's row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_writes_and_reads_on_two_instances_never_goes_backwards() {
    let redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let instances = Arc::new([
        Instance::start(&db, &redis).await,
        Instance::start(&db, &redis).await,
    ]);
    let mut ids = Vec::new();
    for n in 0..4 {
        let user = instances[0]
            .create(&format!("storm{n}@example.com"), "Storm")
            .await;
        ids.push(id_of(&user));
    }
    let ids = Arc::new(ids);
    // Per user: the highest version whose write has been acknowledged.
    let acknowledged: Arc<Vec<AtomicI64>> =
        Arc::new(ids.iter().map(|_| AtomicI64::new(1)).collect());
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let (instances, ids, acknowledged) = (instances.clone(), ids.clone(), acknowledged.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![0i64; ids.len()];
            let mut round = 0usize;
            while Instant::now() < deadline {
                round += 1;
                let user = (worker + round) % ids.len();
                let instance = &instances[(worker + round / 3) % 2];
                if worker % 2 == 0 {
                    let written = instance
                        .patch(&ids[user], json!({ "name": format!("w{worker} r{round}") }))
                        .await;
                    acknowledged[user].fetch_max(version_of(&written), Ordering::SeqCst);
                } else {
                    let floor = acknowledged[user].load(Ordering::SeqCst);
                    let (status, read) = instance.get(&ids[user]).await;
                    assert_eq!(status, 200);
                    let version = version_of(&read);
                    assert!(
                        version >= floor,
                        "read {version} after {floor} was acknowledged"
                    );
                    assert!(
                        version >= seen[user],
                        "went back from {} to {version}",
                        seen[user]
                    );
                    seen[user] = version;
                }
            }
            round
        }));
    }
    let mut rounds = 0;
    for task in tasks {
        rounds += task.await.unwrap();
    }
    assert!(rounds > 100, "the storm ran: {rounds} requests");

    // Afterwards the cache holds what the database holds: each trusted entry is the row, as
    // an instance without the cache reads it.
    let database = api::build(test_config(db.url(), &[])).await.unwrap();
    let database = TestClient::new(database.endpoint());
    let mut checked = 0;
    for id in ids.iter() {
        let Some(cached) = current_entry(&redis, id).await else {
            continue;
        };
        let row = database.get(format!("/api/v1/users/{id}")).send().await;
        let row: Value = row.json().await.value().deserialize();
        assert_eq!(cached, row, "{id}");
        checked += 1;
    }
    assert!(checked > 0, "some entries were current");
}

fn key_of(id: &str) -> String {
    format!("users:id:{}", id.replace('-', ""))
}

/// The user's entry, when it is stamped with the current generation (what a read trusts).
async fn current_entry(redis: &TestRedis, id: &str) -> Option<Value> {
    let mut connection = redis.connection().await;
    let generation: Option<String> = connection.get("users:generation").await.unwrap();
    let entry: Option<String> = connection.get(key_of(id)).await.unwrap();
    let entry = entry?;
    let mut fields = entry.splitn(3, ' ');
    if fields.next() != Some(generation?.as_str()) {
        return None;
    }
    serde_json::from_str(fields.nth(1)?).ok()
}

/// Redis paused while a write is lost to it: the instance that lost it bumps the generation
/// before its response, so the other instance, which never saw the pause, does not serve the
/// entry the write left behind once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_while_redis_was_paused_is_not_served_stale_after() {
    let redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let (a, b) = (
        Instance::start(&db, &redis).await,
        Instance::start(&db, &redis).await,
    );
    let user = a.create("paused@example.com", "Before").await;
    let id = id_of(&user);
    assert_eq!(b.get(&id).await, (200, user.clone()), "cached at version 1");

    redis.pause();
    let started = Instant::now();
    assert_eq!(a.get(&id).await, (200, user.clone()), "from the database");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(!a.app.cache().unwrap().in_use(), "A bypasses the cache now");
    let updated = a.patch(&id, json!({ "name": "After" })).await;
    assert_eq!(version_of(&updated), 2);
    redis.resume();

    assert_eq!(
        b.get(&id).await,
        (200, updated.clone()),
        "B reads version 2"
    );
    assert_eq!(b.lookup("paused@example.com").await, (200, updated.clone()));
    // And A comes back to the cache by itself.
    eventually("A uses the cache again", 5, || async {
        a.app.cache().unwrap().in_use()
    })
    .await;
    assert_eq!(a.get(&id).await, (200, updated));
}

/// Redis stopped, paused and flushed: every request is answered, from the database, within
/// the cache timeout plus the database's time; when Redis is back, hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_paused_or_flushed_never_fails_a_request() {
    let mut redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let instance = Instance::start(&db, &redis).await;
    let user = instance.create("faulty@example.com", "Faulty").await;
    let id = id_of(&user);
    let mut version = 1;

    for fault in ["stopped", "paused", "flushed"] {
        match fault {
            "stopped" => redis.stop(),
            "paused" => redis.pause(),
            _ => redis.flushall().await,
        }
        for round in 0..10 {
            let started = Instant::now();
            let written = instance
                .patch(&id, json!({ "name": format!("{fault} {round}") }))
                .await;
            version += 1;
            assert_eq!(version_of(&written), version);
            assert_eq!(instance.get(&id).await, (200, written.clone()), "{fault}");
            assert_eq!(
                instance.lookup("faulty@example.com").await,
                (200, written),
                "{fault}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{fault}: three requests took {:?}",
                started.elapsed()
            );
        }
        match fault {
            "stopped" => redis.restart().await,
            "paused" => redis.resume(),
            _ => {}
        }
        // Hits resume: the instance uses the cache again and a read filled it; then a GET
        // answers while the table is locked.
        eventually(
            &format!("a current entry after Redis {fault}"),
            10,
            || async {
                let _ = instance.get(&id).await;
                instance.app.cache().unwrap().in_use() && current_entry(&redis, &id).await.is_some()
            },
        )
        .await;
        let mut locker = lock_users(db.url()).await;
        let hit = instance.get_within(&id, Duration::from_secs(2)).await;
        sea_orm::sqlx::Executor::execute(&mut locker, "ROLLBACK")
            .await
            .unwrap();
        assert_eq!(
            hit.map(|(status, user)| (status, version_of(&user))),
            Some((200, version)),
            "{fault}"
        );
    }
}

/// What on-call sees, from the real binary's `/metrics`: hits, then errors and bypasses while
/// Redis is down (every request still answered), then hits again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_hits_errors_and_bypasses() {
    let mut redis = TestRedis::start().await;
    let db = TestDb::new(Backend::Postgres).await;
    let url = redis.url();
    let service = Binary::start(db.url(), &[("REDIS_URL", url.as_str())], None).await;
    let created = service.create("metered@example.com", "Metered").await;
    let id = created
        .split("/api/v1/users/")
        .nth(1)
        .and_then(|rest| rest.get(..36))
        .expect("a Location header")
        .to_owned();
    let get = format!("GET /api/v1/users/{id} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let series =
        |result: &str| format!(r#"cache_requests_total{{operation="user.get",result="{result}"}}"#);

    let answered = exchange(service.public, &get).await.unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert_eq!(service.counter(&series("hit")).await, 1.0);

    redis.stop();
    for _ in 0..5 {
        let answered = exchange(service.public, &get).await.unwrap();
        assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    }
    assert!(service.counter(&series("error")).await >= 1.0);
    assert!(service.counter(&series("bypass")).await >= 1.0);

    redis.restart().await;
    eventually("hits resume", 10, || async {
        let _ = exchange(service.public, &get).await;
        service.counter(&series("hit")).await >= 2.0
    })
    .await;
}

/// `rediss://`: the cache works over TLS against a server whose certificate the test's own CA
/// signed (`REDIS_CA_FILE`); without that CA the certificate does not verify, and the service
/// serves from the database alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_speaks_tls_with_the_ca_it_is_given() {
    let certificates = crate::common::tls::Certificates::generate();
    let redis = TestRedis::start_tls(&certificates).await;
    let db = TestDb::new(Backend::Postgres).await;
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    for (ca_file, cached) in [
        (certificates.path("ca.pem"), true),
        (certificates.path("other-ca.pem"), false),
    ] {
        let app = api::build(test_config(
            db.url(),
            &[
                ("REDIS_URL", url.as_str()),
                ("REDIS_CA_FILE", ca_file.as_str()),
            ],
        ))
        .await
        .expect("build the app");
        let client = TestClient::new(app.endpoint());
        let email = format!("tls-{cached}@example.com");
        let response = client
            .post("/api/v1/users")
            .body_json(&json!({ "email": email, "name": "Over TLS" }))
            .send()
            .await;
        response.assert_status(StatusCode::CREATED);
        let created: Value = response.json().await.value().deserialize();
        let stored = redis.get(&key_of(&id_of(&created))).await;
        assert_eq!(
            stored.is_some(),
            cached,
            "stored through TLS with {ca_file}"
        );
    }
}
