//! Hostile clients cannot hold the service: stalled heads, trickled bodies and idle connections
//! are closed by their timeouts, connections beyond the cap wait in the backlog, and running out
//! of descriptors makes the listener back off, not spin. Real sockets against the real binary.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::binary::{Binary, exchange};
use crate::common::eventually;

/// The binary on its own SQLite database.
struct Service {
    binary: Binary,
    _dir: tempfile::TempDir,
}

impl Service {
    async fn start(env: &[(&str, &str)], ulimit: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/users.db?mode=rwc", dir.path().display());
        Self {
            binary: Binary::start(&url, env, ulimit).await,
            _dir: dir,
        }
    }

    async fn counter(&self, series: &str) -> f64 {
        self.binary.counter(series).await
    }
}

const LIVE: &str = "GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// A keep-alive request on `stream`, answered 200.
async fn assert_live_on(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

/// Waits for the server to close `stream` (end of stream or reset), at most `within`; the
/// bytes it sent first are returned.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "still open after {within:?}");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_heads_are_closed_within_the_header_timeout() {
    let service = Service::start(
        &[
            ("HTTP_HEADER_TIMEOUT_SECS", "1"),
            ("HTTP_IDLE_TIMEOUT_SECS", "60"),
        ],
        None,
    )
    .await;
    let started = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(service.binary.public).await.unwrap();
        stream
            .write_all(b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // Meanwhile everyone else is served.
    let live = exchange(service.binary.public, LIVE).await.unwrap();
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    for stream in &mut stalled {
        let sent = closed_by_server(stream, Duration::from_secs(5)).await;
        assert!(sent.is_empty(), "no response to half a head");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed by the timeout, not at once: {:?}",
        started.elapsed()
    );
    let closed = service
        .counter(r#"http_server_connections_closed_total{reason="header_timeout"}"#)
        .await;
    assert!(closed >= 200.0, "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_answered_408_and_never_reaches_the_handler() {
    let service = Service::start(&[("HTTP_REQUEST_TIMEOUT_SECS", "1")], None).await;
    let mut stream = TcpStream::connect(service.binary.public).await.unwrap();
    let body = r#"{"email":"slow@example.com","name":"Slow"}"#;
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    let response = closed_by_server(&mut stream, Duration::from_secs(5)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    assert!(
        response.contains(r#""code":"request_timeout""#),
        "{response}"
    );
    // The rest of the body changes nothing now.
    let _ = stream.write_all(&body.as_bytes()[10..]).await;
    let list = exchange(
        service.binary.public,
        "GET /api/v1/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        list.contains(r#""items":[]"#),
        "nothing was created: {list}"
    );
    let closed = service
        .counter(r#"http_server_connections_closed_total{reason="request_timeout"}"#)
        .await;
    assert_eq!(closed, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    // A long header timeout: what closes the connection is the idle one.
    let service = Service::start(
        &[
            ("HTTP_IDLE_TIMEOUT_SECS", "1"),
            ("HTTP_HEADER_TIMEOUT_SECS", "60"),
        ],
        None,
    )
    .await;
    let mut stream = TcpStream::connect(service.binary.public).await.unwrap();
    for _ in 0..2 {
        // Two requests on one connection: keep-alive works before it idles out.
        assert_live_on(&mut stream).await;
    }
    let idle_since = Instant::now();
    closed_by_server(&mut stream, Duration::from_secs(5)).await;
    assert!(idle_since.elapsed() >= Duration::from_millis(900));
    let closed = service
        .counter(r#"http_server_connections_closed_total{reason="idle_timeout"}"#)
        .await;
    assert!(closed >= 1.0, "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_cap_connections_wait_and_are_served_when_the_flood_ends() {
    let service = Service::start(&[("HTTP_MAX_CONNECTIONS", "4")], None).await;
    // The four connections the service holds: kept alive, and served throughout.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(service.binary.public).await.unwrap();
        assert_live_on(&mut stream).await;
        held.push(stream);
    }
    assert_eq!(service.counter("http_server_open_connections").await, 4.0);
    // More clients: they connect (the kernel's backlog) but wait to be accepted.
    let flood: Vec<_> = (0..6)
        .map(|_| tokio::spawn(exchange(service.binary.public, LIVE)))
        .collect();
    for stream in &mut held {
        // Held connections keep being served.
        assert_live_on(stream).await;
    }
    assert!(flood.iter().all(|waiting| !waiting.is_finished()));
    assert_eq!(service.counter("http_server_open_connections").await, 4.0);
    drop(held);
    for waiting in flood {
        let response = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("served once the held connections closed")
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks (100 per second here).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_listener_backs_off_says_so_once_and_recovers() {
    let service = Service::start(&[], Some("-n 96")).await;
    let pid = service.binary.pid();
    // More connections than descriptors: accept fails with EMFILE for the rest.
    let mut flood = Vec::new();
    for _ in 0..160 {
        if let Ok(Ok(stream)) = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(service.binary.public),
        )
        .await
        {
            flood.push(stream);
        }
    }
    let log_has_the_warning = |log: &str| log.contains("cannot accept connections");
    // A measurement window, not a synchronisation: for two seconds of exhaustion, a spinning
    // accept loop would burn a whole core.
    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    assert!(cpu < 0.5, "the listener spun: {cpu} s of CPU in 2 s");
    drop(flood);
    let service_addr = service.binary.public;
    eventually("the service serves again", 10, || async move {
        exchange(service_addr, LIVE)
            .await
            .is_ok_and(|response| response.starts_with("HTTP/1.1 200"))
    })
    .await;
    let errors = service.counter("http_server_accept_errors_total").await;
    assert!(errors >= 1.0, "{errors}");
    let log = service.binary.kill().await;
    assert!(log_has_the_warning(&log), "{log}");
    assert_eq!(
        log.matches("cannot accept connections").count(),
        1,
        "said once per episode: {log}"
    );
}

#[tokio::test]
async fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    let service = Service::start(&[], Some("-Sn 256")).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", service.binary.pid())).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "soft = hard: {line}");
    assert_ne!(numbers[0], "256", "{line}");
}
