//! OTLP trace export without a collector: nothing panics and no request waits (what a real
//! collector receives: `traces.rs`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::common::free_port;

async fn start(otlp_endpoint: &str, dir: &std::path::Path) -> (Child, SocketAddr) {
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_api"))
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/users.db?mode=rwc", dir.display()),
        )
        .env("HTTP_ADDR", public.to_string())
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
        .env("SHUTDOWN_GRACE_SECS", "5")
        // Set, so that a developer's .env cannot configure tokens or limits here.
        .env("API_TOKENS", "")
        .env("RATE_LIMIT_PER_SECOND", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if TcpStream::connect(public).await.is_ok() {
            return (child, public);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service did not start");
}

async fn request(public: SocketAddr) -> String {
    let mut stream = TcpStream::connect(public).await.unwrap();
    let body = r#"{"email":"otlp@example.com","name":"Otlp"}"#;
    let request = format!(
        "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn stop(mut child: Child) -> String {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits in time")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn without_a_collector_requests_do_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (child, public) = start(&closed, dir.path()).await;
    let started = Instant::now();
    let response = request(public).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    for _ in 0..20 {
        let mut stream = TcpStream::connect(public).await.unwrap();
        stream
            .write_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    stop(child).await;
}
