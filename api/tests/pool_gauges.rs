//! The pool gauges are read at scrape time, not only every `DB_POOL_METRICS_INTERVAL_SECS`.
//! (Its own test binary: the gauges are process-wide, and the other tests' apps set them too.)

#[path = "it/common/mod.rs"]
mod common;

use common::binary::exchange;
use common::{Backend, TestDb, eventually, lock_users, test_config};
use sea_orm::sqlx::Executor;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    exchange(addr, &request).await.unwrap()
}

async fn create(addr: std::net::SocketAddr, email: String) -> String {
    let body = format!(r#"{{"email":"{email}","name":"Blocked"}}"#);
    let request = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, &request).await.unwrap()
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    get(addr, "/metrics").await
}

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name}"))
}

/// On PostgreSQL a connection is active while it carries statements: held here by a table lock
/// that blocks a list on a scan connection and creates on a write connection (the warm point
/// read connection stays idle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_sees_the_pool_as_it_is_now() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = test_config(
        db.url(),
        &[
            ("DB_POOL_METRICS_INTERVAL_SECS", "3600"),
            ("DB_MIN_CONNECTIONS", "2"),
            ("DB_MAX_CONNECTIONS", "7"),
            ("DB_STATEMENT_TIMEOUT_MS", "30000"),
        ],
    );
    let listeners = api::Listeners::bind(&config).await.unwrap();
    let (public, admin) = (listeners.public_addr(), listeners.admin_addr());
    let app = api::build(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::run_until(app, listeners, async {
        let _ = stopped.await;
    }));

    let before = scrape(admin).await;
    assert_eq!(gauge(&before, "database_pool_connections_max"), 7.0);
    assert_eq!(gauge(&before, "database_pool_connections_min"), 2.0);
    assert_eq!(gauge(&before, "database_pool_connections_active"), 0.0);
    assert_eq!(gauge(&before, "database_pool_connections_idle"), 2.0);

    let mut locker = lock_users(db.url()).await;
    let reads = (0..1).map(|_| tokio::spawn(get(public, "/api/v1/users")));
    let writes = (0..2).map(|i| tokio::spawn(create(public, format!("blocked{i}@example.com"))));
    let blocked: Vec<_> = reads.chain(writes).collect();
    eventually(
        "a scan and a write connection carry a blocked statement",
        10,
        || async {
            let during = scrape(admin).await;
            gauge(&during, "database_pool_connections_active") >= 2.0
                && gauge(&during, "database_pool_connections_idle") <= 1.0
        },
    )
    .await;
    locker.execute("ROLLBACK").await.unwrap();
    for request in blocked {
        let response = request.await.unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.1 201"),
            "{response}"
        );
    }
    let after = scrape(admin).await;
    assert_eq!(gauge(&after, "database_pool_connections_active"), 0.0);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
