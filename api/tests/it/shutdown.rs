//! Graceful shutdown: stop accepting, finish what is in flight, close the pool.

use crate::common::{Backend, TestDb, admin_connection, eventually, test_config};
use sea_orm::sqlx::{self, Connection, Executor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http(addr: std::net::SocketAddr, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

async fn connections_to(database: &str) -> i64 {
    let mut admin = admin_connection().await;
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    count
}

async fn lock_waiters(database: &str) -> i64 {
    let mut admin = admin_connection().await;
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_complete_after_the_signal() {
    let db = TestDb::new(Backend::Postgres).await;
    let database = db
        .url()
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let config = test_config(db.url(), &[("SHUTDOWN_GRACE_SECS", "10")]);
    let listeners = api::Listeners::bind(&config).await.unwrap();
    let addr = listeners.public_addr();
    let app = api::build(config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::run_until(app, listeners, async {
        let _ = stopped.await;
    }));

    let created = http(
        addr,
        "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n{\"email\":\"a@example.com\",\"name\":\"Drain\"}  ",
    )
    .await
    .unwrap();
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");

    // Hold the table so the next request is in flight, blocked in the database.
    let mut locker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_flight = tokio::spawn(http(
        addr,
        "GET /api/v1/users?limit=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ));
    eventually("the request to wait on the lock", 10, || async {
        lock_waiters(&database).await > 0
    })
    .await;

    stop.send(()).unwrap();
    eventually("the listener to close", 10, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request is still being served"
    );

    locker.execute("ROLLBACK").await.unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("a@example.com"));
    server.await.unwrap().unwrap();
    drop(locker);
    eventually("the pool to close", 10, || async {
        connections_to(&database).await == 0
    })
    .await;
}
