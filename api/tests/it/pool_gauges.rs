//! The pool gauges are read at scrape time, not only every `DB_POOL_METRICS_INTERVAL_SECS`.
//! (Its own test binary: the gauges are process-wide.)

use crate::common::{Backend, TestDb, test_config};
use sea_orm::TransactionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_sees_the_pool_as_it_is_now() {
    let db = TestDb::new(Backend::Postgres).await;
    let config = test_config(
        db.url(),
        &[
            ("DB_POOL_METRICS_INTERVAL_SECS", "3600"),
            ("DB_MIN_CONNECTIONS", "2"),
            ("DB_MAX_CONNECTIONS", "7"),
        ],
    );
    let listeners = api::Listeners::bind(&config).await.unwrap();
    let admin = listeners.admin_addr();
    let app = api::build(config).await.unwrap();
    let pool = app.db().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::run_until(app, listeners, async {
        let _ = stopped.await;
    }));

    let before = scrape(admin).await;
    assert_eq!(gauge(&before, "database_pool_connections_max"), 7.0);
    assert_eq!(gauge(&before, "database_pool_connections_min"), 2.0);
    let active_before = gauge(&before, "database_pool_connections_active");

    let held = [
        pool.begin().await.unwrap(),
        pool.begin().await.unwrap(),
        pool.begin().await.unwrap(),
    ];
    let during = scrape(admin).await;
    assert_eq!(
        gauge(&during, "database_pool_connections_active"),
        active_before + 3.0,
        "{during}"
    );
    drop(held);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
