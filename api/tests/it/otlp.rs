//! OTLP trace export without a collector: nothing panics and no request waits (what a real
//! collector receives: `traces.rs`).

use std::time::{Duration, Instant};

use crate::common::binary::{Binary, exchange};
use crate::common::free_port;

#[tokio::test]
async fn without_a_collector_requests_do_not_wait() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/users.db?mode=rwc", dir.path().display());
    let closed = format!("http://127.0.0.1:{}", free_port());
    let service = Binary::start(&url, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &closed)], None).await;
    let started = Instant::now();
    let body = r#"{"email":"otlp@example.com","name":"Otlp"}"#;
    let created = exchange(
        service.public,
        &format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
    .unwrap();
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    for _ in 0..20 {
        let live = exchange(
            service.public,
            "GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(live.starts_with("HTTP/1.1 200"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    service.stop().await;
}
