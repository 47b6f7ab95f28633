//! What an on-call engineer sees is true: the metric names of docs/architecture.md on the admin
//! listener only, route templates rather than raw paths, no personal data in metrics or logs, and
//! every dashboard query answered with data by a real Prometheus scraping the real service.
//! (Its own test binary: the metrics recorder is process-wide, and the other tests' apps would
//! add their series.)

#[path = "it/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::redis_server::TestRedis;
use common::replica::ReplicaPair;
use common::{Backend, TestDb, eventually, free_port, percent_encode, test_config};
use poem::test::TestClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A plain HTTP/1.1 GET: (status, body).
async fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, dechunk(&body)))
}

/// Undoes chunked transfer encoding, if the body uses it.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 {
            return out;
        }
        if tail.len() < size {
            return body.to_owned();
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
}

fn spawn(program: &str, args: &[String], env: &[(&str, String)]) -> Child {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().unwrap_or_else(|error| {
        panic!("cannot run {program} ({error}): install Debian's prometheus, prometheus-postgres-exporter and prometheus-redis-exporter (.ci/run does)")
    })
}

/// A served app on its own PostgreSQL database.
struct Served {
    client: TestClient<Arc<poem::endpoint::BoxEndpoint<'static>>>,
    public: SocketAddr,
    admin: SocketAddr,
    /// The primary's URL.
    url: String,
    _db: Database,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Where a served instance's data lives: a test database, or a primary and replica of the
/// test's own.
enum Database {
    Test(TestDb),
    Pair(ReplicaPair),
}

impl Served {
    async fn start() -> Self {
        let db = TestDb::new(Backend::Postgres).await;
        Self::start_with(Database::Test(db), &[]).await
    }

    async fn start_with(db: Database, overrides: &[(&str, &str)]) -> Self {
        let replica_url;
        let mut overrides = overrides.to_vec();
        overrides.push(("DB_POOL_METRICS_INTERVAL_SECS", "1"));
        let url = match &db {
            Database::Test(db) => db.url().to_owned(),
            Database::Pair(pair) => {
                replica_url = pair.replica_url();
                overrides.push(("DATABASE_READ_URL", replica_url.as_str()));
                pair.primary_url()
            }
        };
        let config = test_config(&url, &overrides);
        let listeners = api::Listeners::bind(&config).await.unwrap();
        let (public, admin) = (listeners.public_addr(), listeners.admin_addr());
        let app = api::build(config).await.unwrap();
        let client = TestClient::new(app.endpoint());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(api::run_until(app, listeners, async {
            let _ = stopped.await;
        }));
        Served {
            client,
            public,
            admin,
            url,
            _db: db,
            stop: Some(stop),
        }
    }

    /// One round of every kind of request, errors included.
    async fn traffic(&self, round: u64) {
        let email = format!("metrics{round}@example.com");
        let created = self
            .client
            .post("/api/v1/users")
            .body_json(&json!({"email": email, "name": "Metric User"}))
            .send()
            .await;
        let user: Value = created.json().await.value().deserialize();
        let id = user["id"].as_str().unwrap_or_default().to_owned();
        self.client
            .post("/api/v1/users")
            .body_json(&json!({"email": email, "name": "Dup"}))
            .send()
            .await;
        self.client.get(format!("/api/v1/users/{id}")).send().await;
        self.client
            .get(format!("/api/v1/users/{}", uuid::Uuid::now_v7()))
            .send()
            .await;
        self.client.get("/api/v1/users/not-a-uuid").send().await;
        self.client
            .get("/api/v1/users/lookup")
            .query("email", &email)
            .send()
            .await;
        self.client
            .get("/api/v1/users?limit=5&name_prefix=met")
            .send()
            .await;
        self.client
            .patch(format!("/api/v1/users/{id}"))
            .body_json(&json!({"name": "Renamed"}))
            .send()
            .await;
        self.client.get("/no/such/route").send().await;
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_design_and_never_leak_paths_or_emails() {
    let served = Served::start().await;
    for round in 0..3 {
        served.traffic(round).await;
    }
    let (status, metrics) = get(served.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for (name, kind) in [
        ("database_query_duration_seconds", "histogram"),
        ("database_errors_total", "counter"),
        ("database_pool_connections_active", "gauge"),
        ("database_pool_connections_idle", "gauge"),
        ("database_pool_connections_max", "gauge"),
        ("database_pool_connections_min", "gauge"),
        ("http_server_requests_total", "counter"),
        ("http_server_request_duration_seconds", "histogram"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} {kind}")),
            "{name} is a {kind}"
        );
    }
    assert!(metrics.contains(r#"http_server_request_duration_seconds_bucket{method="GET",route="/api/v1/users/{id}",status="200",le="0.0005"}"#));
    // The recorder is process-wide and other tests run beside this one: at least our three.
    let duplicates = sample(
        &metrics,
        r#"database_errors_total{operation="user.create",kind="unique_violation"}"#,
    );
    assert!(duplicates >= 3.0, "{duplicates}");
    let timeouts = r#"database_errors_total{operation="user.find_by_id",kind="pool_timeout"}"#;
    assert_eq!(sample(&metrics, timeouts), 0.0, "registered at 0");
    assert!(metrics.contains(r#"database_query_duration_seconds_bucket{operation="user.find_by_email",outcome="ok",le="0.005"}"#));
    assert!(metrics.contains("database_pool_connections_max 50"));

    let routes: std::collections::BTreeSet<&str> = metrics
        .match_indices("route=\"")
        .map(|(at, marker)| {
            let value = &metrics[at + marker.len()..];
            &value[..value.find('"').unwrap()]
        })
        .collect();
    let allowed = [
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/lookup",
        "unmatched",
    ];
    for route in &routes {
        assert!(
            allowed.contains(route),
            "route label {route:?} is not a template"
        );
    }
    assert!(
        routes.contains("unmatched") && routes.contains("/api/v1/users/{id}"),
        "{routes:?}"
    );
    assert!(!metrics.contains("example.com"), "no email in any label");
    assert!(
        !metrics.contains("not-a-uuid") && !metrics.contains("/no/such"),
        "no raw path"
    );

    let (public_status, _) = get(served.public, "/metrics").await.unwrap();
    assert_eq!(public_status, 404, "/metrics is not on the public listener");
}

/// The value of one series in the exposition text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    // Everything on: the cache, with a Redis of the test's own and redis-exporter watching
    // it; a replica for reads (a primary and replica of the test's own).
    let redis = TestRedis::start().await;
    let redis_url = redis.url();
    let pair = Database::Pair(ReplicaPair::start());
    let served = Arc::new(Served::start_with(pair, &[("REDIS_URL", redis_url.as_str())]).await);
    let dir = tempfile::tempdir().unwrap();
    let exporter_port = free_port();
    let redis_exporter_port = free_port();
    let prometheus_port = free_port();
    let _exporter = spawn(
        "prometheus-postgres-exporter",
        &[format!("--web.listen-address=127.0.0.1:{exporter_port}")],
        &[("DATA_SOURCE_NAME", served.url.clone())],
    );
    let _redis_exporter = spawn(
        "prometheus-redis-exporter",
        &[format!(
            "--web.listen-address=127.0.0.1:{redis_exporter_port}"
        )],
        &[
            ("REDIS_ADDR", redis.address()),
            ("REDIS_PASSWORD", redis.password().to_owned()),
        ],
    );
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../observability/prometheus/alerts.yml"
    );
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  \
         - job_name: user-service\n    static_configs:\n      - targets: ['{}']\n  \
         - job_name: postgres-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n  \
         - job_name: redis-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{redis_exporter_port}']\n",
        served.admin
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let _prometheus = spawn(
        "prometheus",
        &[
            format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        &[],
    );
    let prometheus: SocketAddr = format!("127.0.0.1:{prometheus_port}").parse().unwrap();

    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (served, running) = (Arc::clone(&served), Arc::clone(&running));
        tokio::spawn(async move {
            let mut round = 0;
            while running.load(Ordering::Relaxed) {
                served.traffic(round).await;
                round += 1;
            }
        })
    };

    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut empty: Vec<String> = queries.iter().map(|(_, expr)| expr.clone()).collect();
    for _ in 0..600 {
        let mut still_empty = Vec::new();
        for expr in &empty {
            if !has_data(prometheus, expr).await {
                still_empty.push(expr.clone());
            }
        }
        empty = still_empty;
        if empty.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    running.store(false, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
    let (status, rules) = get(prometheus, "/api/v1/rules").await.unwrap();
    assert_eq!(status, 200);
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let health: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| &r["health"])
        .collect();
    assert!(
        health.len() >= 10 && health.iter().all(|h| *h != "err"),
        "the alert rules load and evaluate: {health:?}"
    );
}

async fn has_data(prometheus: SocketAddr, expr: &str) -> bool {
    // Grafana's $__rate_interval: at least four scrape intervals; the instance picker on
    // "All".
    let expr = expr
        .replace("$__rate_interval", "5s")
        .replace("$instance", ".*");
    let target = format!("/api/v1/query?query={}", percent_encode(&expr));
    let Ok((200, body)) = get(prometheus, &target).await else {
        return false;
    };
    let Ok(answer) = serde_json::from_str::<Value>(&body) else {
        return false;
    };
    answer["data"]["result"].as_array().is_some_and(|result| {
        result
            .iter()
            .any(|series| series["value"][1].as_str().is_some_and(|v| v != "NaN"))
    })
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../observability/grafana/dashboards"
    );
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                queries.push((
                    panel["title"].as_str().unwrap().to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_ids_and_never_emails_or_names() {
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_port(), free_port());
    let public_addr: SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/users.db?mode=rwc", dir.path().display()),
        )
        .env("HTTP_ADDR", public_addr.to_string())
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("LOG_FORMAT", "json")
        // Set, so that a developer's .env cannot configure tokens or limits here.
        .env("API_TOKENS", "")
        .env("RATE_LIMIT_PER_SECOND", "")
        .env("RUST_LOG", "debug")
        .env("DB_SLOW_QUERY_MS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually("the service to listen", 30, || async {
        get(public_addr, "/health/live")
            .await
            .is_ok_and(|(s, _)| s == 200)
    })
    .await;

    let client = |method: &'static str, path: String, body: Option<Value>| async move {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(public_addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: canary-request-42\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let created = client(
        "POST",
        "/api/v1/users".into(),
        Some(json!({"email": "Secret.Canary@example.com", "name": "Canary Person"})),
    )
    .await;
    assert!(
        created.starts_with("HTTP/1.1 201")
            && created
                .to_lowercase()
                .contains("x-request-id: canary-request-42"),
        "{created}"
    );
    let id = created
        .split("\"id\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    client(
        "POST",
        "/api/v1/users".into(),
        Some(json!({"email": "secret.canary@example.com", "name": "Canary Twin"})),
    )
    .await;
    client(
        "POST",
        "/api/v1/users".into(),
        Some(json!({"email": "not-an-email-canary", "name": "Canary Invalid"})),
    )
    .await;
    client(
        "GET",
        "/api/v1/users/lookup?email=SECRET.CANARY%40example.com".into(),
        None,
    )
    .await;
    client("GET", "/api/v1/users?name_prefix=canary".into(), None).await;
    client(
        "PATCH",
        format!("/api/v1/users/{id}"),
        Some(json!({"name": "Canary Renamed", "email": "other.canary@example.com"})),
    )
    .await;

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut logs = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();

    assert!(logs.lines().count() > 10, "{logs}");
    for line in logs.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "LOG_FORMAT=json: {line}"
        );
        assert!(
            !line.to_lowercase().contains("canary") || line.contains("canary-request-42"),
            "PII in a log line: {line}"
        );
    }
    assert!(
        logs.contains("canary-request-42"),
        "the request id is in the request's log lines"
    );
    assert!(
        logs.contains("slow statement"),
        "the slow-statement log ran (threshold 0)"
    );
}
