//! PostgreSQL restarted under a read and write load. This test stops and starts the local
//! PostgreSQL cluster (`pg_ctlcluster`, as root, as CI runs): it lives in a test binary of its
//! own, so no other test runs while the database is down.
//!
//! While it is down: writes and reads get 503 problem+json with Retry-After within
//! DB_ACQUIRE_TIMEOUT_SECS + 1 s, never a 500, a hang or a dropped connection; /health/ready says
//! 503 and /health/live 200. Once it is back: success again within 5 s, and every user
//! acknowledged with 201 is in the database.

#[path = "it/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, TestDb, eventually, test_config};
use sea_orm::sqlx::{self, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACQUIRE_TIMEOUT_SECS: u64 = 2;

struct Reply {
    status: u16,
    retry_after: bool,
    problem: bool,
    body: String,
    elapsed: Duration,
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<Reply> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let head = head.to_ascii_lowercase();
    Ok(Reply {
        status: raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        retry_after: head.contains("\r\nretry-after: "),
        problem: head.contains("content-type: application/problem+json"),
        body: body.to_owned(),
        elapsed: started.elapsed(),
    })
}

fn cluster(action: &str) {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL cluster")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .expect("a cluster version");
    let mut command = std::process::Command::new("pg_ctlcluster");
    command.args(["--skip-systemctl-redirect", &version, "main", action]);
    if action == "stop" {
        command.args(["-m", "fast"]);
    }
    let status = command.status().expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action}: {status}");
}

/// Starts PostgreSQL again whatever happens, so a failing assertion cannot leave it down.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args(["-c", "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start >/dev/null 2>&1"])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_rides_out_a_postgres_restart_and_loses_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = test_config(
        db.url(),
        &[
            ("DB_ACQUIRE_TIMEOUT_SECS", &ACQUIRE_TIMEOUT_SECS.to_string()),
            ("DB_MAX_CONNECTIONS", "8"),
            ("DB_MIN_CONNECTIONS", "2"),
        ],
    );
    let listeners = api::Listeners::bind(&config).await.unwrap();
    let addr = listeners.public_addr();
    let app = api::build(config).await.unwrap();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::run_until(app, listeners, async {
        let _ = server_stopped.await;
    }));

    let running = Arc::new(AtomicBool::new(true));
    let unavailable = Arc::new(AtomicU32::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let replies = Arc::new(Mutex::new(
        Vec::<(u16, bool, bool, Duration, Instant)>::new(),
    ));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (running, unavailable, acknowledged, replies) = (
            running.clone(),
            unavailable.clone(),
            acknowledged.clone(),
            replies.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while running.load(Ordering::Relaxed) {
                n += 1;
                let reply = if worker % 2 == 0 {
                    let email = format!("restart-{worker}-{n}@example.com");
                    let body = format!(r#"{{"email":"{email}","name":"Restart"}}"#);
                    let reply = call(addr, "POST", "/api/v1/users", &body)
                        .await
                        .expect("no dropped connection");
                    if reply.status == 201 {
                        acknowledged.lock().unwrap().push(email);
                    }
                    reply
                } else {
                    call(addr, "GET", "/api/v1/users?limit=5", "")
                        .await
                        .expect("no dropped connection")
                };
                if reply.status == 503 {
                    unavailable.fetch_add(1, Ordering::Relaxed);
                }
                assert!(
                    matches!(reply.status, 200 | 201 | 503),
                    "status {}: {}",
                    reply.status,
                    reply.body
                );
                replies.lock().unwrap().push((
                    reply.status,
                    reply.retry_after,
                    reply.problem,
                    reply.elapsed,
                    Instant::now(),
                ));
            }
        }));
    }
    let count = |status: u16| {
        replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == status)
            .count()
    };
    eventually("traffic before the restart", 20, || async {
        count(201) >= 10 && count(200) >= 10
    })
    .await;

    let _restart_guard = RestartOnDrop;
    cluster("stop");
    eventually("503s while PostgreSQL is down", 20, || async {
        unavailable.load(Ordering::Relaxed) >= 4
    })
    .await;
    let ready = call(addr, "GET", "/health/ready", "").await.unwrap();
    assert_eq!(ready.status, 503, "ready while down");
    assert!(ready.problem && ready.retry_after);
    assert_eq!(
        call(addr, "GET", "/health/live", "").await.unwrap().status,
        200,
        "live while down"
    );

    cluster("start");
    let back = Instant::now();
    eventually("success after PostgreSQL is back", 5, || async {
        replies
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.0 == 201 && r.4 > back)
    })
    .await;
    let recovered_in = back.elapsed();
    running.store(false, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("no worker failed");
    }
    assert!(
        recovered_in <= Duration::from_secs(5),
        "recovered in {recovered_in:?}"
    );
    assert_eq!(
        call(addr, "GET", "/health/ready", "").await.unwrap().status,
        200
    );

    let replies = replies.lock().unwrap().clone();
    let limit = Duration::from_secs(ACQUIRE_TIMEOUT_SECS + 1);
    for (status, retry_after, problem, elapsed, _) in replies.iter() {
        if *status == 503 {
            assert!(
                *retry_after && *problem,
                "503 with Retry-After as problem+json"
            );
        }
        assert!(
            *elapsed <= limit,
            "a {status} took {elapsed:?}, over {limit:?}"
        );
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let mut admin = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect after the restart");
    let stored: Vec<(String,)> = sqlx::query_as("SELECT email FROM users")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().map(|(e,)| e).collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|e| !stored.contains(*e))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    eprintln!(
        "restart: {} replies, {} created, {} x 503, recovered {recovered_in:?} after start, 0 lost",
        replies.len(),
        acknowledged.len(),
        replies.iter().filter(|r| r.0 == 503).count()
    );
    drop(admin);
    stop_server.send(()).unwrap();
    server.await.unwrap().unwrap();
}
