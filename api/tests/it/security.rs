//! Bearer tokens, rate limiting, CORS and the security headers.

use crate::common::{Backend, TestApp, assert_problem};
use poem::http::StatusCode;
use serde_json::json;

const TOKENS: [(&str, &str); 2] = [
    ("API_TOKENS", "writer-secret,second-writer"),
    ("API_READ_TOKENS", "reader-secret"),
];

#[tokio::test]
async fn tokens_gate_the_api_but_not_probes_or_docs() {
    let app = TestApp::with(Backend::Sqlite, &TOKENS).await;
    let create = |token: Option<&'static str>| {
        let mut request = app
            .client
            .post("/api/v1/users")
            .body_json(&json!({"email": "t@example.com", "name": "T"}));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    let missing = create(None).await;
    assert_problem(missing, 401, "unauthorized").await;
    assert_problem(create(Some("wrong")).await, 401, "unauthorized").await;
    assert_problem(create(Some("reader-secret")).await, 403, "forbidden").await;
    create(Some("writer-secret"))
        .await
        .assert_status(StatusCode::CREATED);
    create(Some("second-writer"))
        .await
        .assert_status(StatusCode::CONFLICT);

    let read = app
        .client
        .get("/api/v1/users")
        .header("authorization", "Bearer reader-secret")
        .send()
        .await;
    read.assert_status_is_ok();
    let lowercase_scheme = app
        .client
        .get("/api/v1/users")
        .header("authorization", "bearer writer-secret")
        .send()
        .await;
    lowercase_scheme.assert_status_is_ok();
    assert_problem(
        app.client.get("/api/v1/users").send().await,
        401,
        "unauthorized",
    )
    .await;
    let basic = app
        .client
        .get("/api/v1/users")
        .header("authorization", "Basic d3JpdGVyLXNlY3JldA==")
        .send()
        .await;
    assert_problem(basic, 401, "unauthorized").await;
    for open in ["/health/live", "/health/ready", "/openapi.json", "/docs"] {
        app.client.get(open).send().await.assert_status_is_ok();
    }
}

#[tokio::test]
async fn without_tokens_the_api_is_open() {
    let app = TestApp::new(Backend::Sqlite).await;
    app.client
        .get("/api/v1/users")
        .send()
        .await
        .assert_status_is_ok();
}

/// A client generated from an open instance's spec must not be told a token is required
/// (schemathesis flags every operation otherwise).
#[tokio::test]
async fn without_tokens_the_served_spec_makes_auth_optional() {
    let app = TestApp::new(Backend::Sqlite).await;
    let spec = served_spec(&app).await;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            // The probes require nothing, and say so.
            let expected = if path.starts_with("/api/v1/") {
                json!([{"bearerAuth": []}, {}])
            } else {
                json!([])
            };
            assert_eq!(operation["security"], expected, "{method} {path}");
        }
    }
}

async fn served_spec(app: &TestApp) -> serde_json::Value {
    app.client
        .get("/openapi.json")
        .send()
        .await
        .json()
        .await
        .value()
        .deserialize()
}

#[tokio::test]
async fn the_spec_declares_bearer_auth_on_the_api_only() {
    let app = TestApp::with(Backend::Sqlite, &TOKENS).await;
    let spec = served_spec(&app).await;
    assert_eq!(
        spec["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    assert_eq!(
        spec["paths"]["/api/v1/users"]["post"]["security"],
        json!([{"bearerAuth": []}])
    );
    assert_eq!(spec["paths"]["/health/live"]["get"]["security"], json!([]));
    let docs = app
        .client
        .get("/docs")
        .send()
        .await
        .0
        .into_body()
        .into_string()
        .await
        .unwrap();
    assert!(
        docs.contains("bearerAuth"),
        "Swagger UI shows the Authorize button"
    );
}

#[tokio::test]
async fn over_the_rate_a_client_gets_429_with_retry_after() {
    let app = TestApp::with(
        Backend::Sqlite,
        &[("RATE_LIMIT_PER_SECOND", "3"), TOKENS[0], TOKENS[1]],
    )
    .await;
    let get = |token: &'static str| {
        app.client
            .get("/api/v1/users")
            .header("authorization", format!("Bearer {token}"))
            .send()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get("writer-secret").await.0.status().as_u16());
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let limited = get("writer-secret").await;
    assert!(limited.0.headers().contains_key("retry-after"));
    assert_problem(limited, 429, "rate_limited").await;
    // Another token has its own budget.
    get("reader-secret").await.assert_status_is_ok();
    // Probes are never limited.
    for _ in 0..10 {
        app.client
            .get("/health/live")
            .send()
            .await
            .assert_status_is_ok();
    }
}

#[tokio::test]
async fn cors_admits_only_configured_origins() {
    let app = TestApp::with(
        Backend::Sqlite,
        &[("CORS_ALLOWED_ORIGINS", "https://app.example.com")],
    )
    .await;
    let preflight = app
        .client
        .options("/api/v1/users")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization,consistency-token",
        )
        .send()
        .await;
    preflight.assert_status_is_ok();
    preflight.assert_header("access-control-allow-origin", "https://app.example.com");
    let allowed = preflight.0.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("consistency-token"), "{allowed}");
    let simple = app
        .client
        .get("/api/v1/users")
        .header("origin", "https://app.example.com")
        .send()
        .await;
    simple.assert_header("access-control-allow-origin", "https://app.example.com");
    let exposed = simple.0.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        exposed.contains("etag")
            && exposed.contains("location")
            && exposed.contains("consistency-token"),
        "{exposed}"
    );
    let foreign = app
        .client
        .get("/api/v1/users")
        .header("origin", "https://evil.example.net")
        .send()
        .await;
    assert!(
        !foreign
            .0
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let without = TestApp::new(Backend::Sqlite).await;
    let response = without
        .client
        .get("/api/v1/users")
        .header("origin", "https://app.example.com")
        .send()
        .await;
    assert!(
        !response
            .0
            .headers()
            .contains_key("access-control-allow-origin"),
        "no CORS unless configured"
    );
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = TestApp::new(Backend::Sqlite).await;
    let created = app.create("h@example.com", "H").await;
    for response in [
        created,
        app.client.get("/api/v1/users/not-a-uuid").send().await,
    ] {
        response.assert_header("x-content-type-options", "nosniff");
        response.assert_header("x-frame-options", "DENY");
        response.assert_header("cache-control", "private, no-cache");
    }
    let docs = app.client.get("/docs").send().await;
    let csp = docs.0.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'sha256-") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        !csp.split(';')
            .any(|d| d.trim().starts_with("script-src") && d.contains("unsafe-inline")),
        "{csp}"
    );
    let live = app.client.get("/health/live").send().await;
    live.assert_header("x-content-type-options", "nosniff");
}

/// Secrets given to the process (a URL's password, tokens, from variables and from files) never
/// show in its logs, at the most verbose level, nor in `/metrics`, through start-up, served and
/// refused requests, a cache that refuses the password, and shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_or_the_metrics() {
    use crate::common::binary::{Binary, exchange};
    use crate::common::{TestDb, redis_server::TestRedis};

    const CANARY: &str = "canary-7f3a";
    let db = TestDb::new(Backend::Postgres).await;
    let redis = TestRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let read_tokens = dir.path().join("read-tokens");
    std::fs::write(&read_tokens, format!("{CANARY}-reader\n")).unwrap();
    // The test PostgreSQL trusts the user; the password is sent nowhere, but held all along.
    let (scheme, rest) = db.url().split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    let url = format!("{scheme}://{user}:{CANARY}-db@{host}");
    let redis_url = format!("redis://:{CANARY}-redis@{}/0", redis.address());
    let read_tokens = read_tokens.display().to_string();
    let token = format!("{CANARY}-writer");
    let service = Binary::start(
        &url,
        &[
            ("RUST_LOG", "trace"),
            ("DATABASE_READ_URL", url.as_str()),
            ("REDIS_URL", redis_url.as_str()),
            ("API_TOKENS", token.as_str()),
            ("API_READ_TOKENS_FILE", read_tokens.as_str()),
        ],
        None,
    )
    .await;
    let body = r#"{"email":"canary@example.com","name":"Canary"}"#;
    for authorization in [token.as_str(), "wrong-token"] {
        let response = exchange(
            service.public,
            &format!(
                "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {authorization}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
        .await
        .unwrap();
        assert!(!response.contains(CANARY), "{response}");
    }
    let metrics = exchange(
        service.admin,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(metrics.contains("http_server_requests_total"), "{metrics}");
    assert!(!metrics.contains(CANARY), "in /metrics");
    let logs = service.stop().await;
    assert!(logs.lines().count() > 10, "trace logs were written: {logs}");
    assert!(!logs.contains(CANARY), "in the logs: {logs}");
}

/// Behind trusted proxies (`TRUSTED_PROXIES`) the client is who they forwarded for: the rate
/// limit counts each client apart and the request log names it. From any other peer the
/// forwarding headers are ignored: a client cannot choose its address (or its bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    use crate::common::TestDb;
    use crate::common::binary::{Binary, exchange};

    let db = TestDb::new(Backend::Sqlite).await;
    let get = |forwarded_for: &'static str| {
        format!(
            "GET /api/v1/users HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {forwarded_for}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    let status = |response: String| response[9..12].to_owned();
    for (trusted, second_client) in [("127.0.0.1", "200"), ("10.0.0.0/8", "429")] {
        let service = Binary::start(
            db.url(),
            &[
                ("RATE_LIMIT_PER_SECOND", "1"),
                ("TRUSTED_PROXIES", trusted),
                ("RUST_LOG", "api=debug,observability=debug"),
            ],
            None,
        )
        .await;
        let first = exchange(service.public, &get("203.0.113.1")).await.unwrap();
        assert_eq!(status(first), "200");
        let again = exchange(service.public, &get("203.0.113.1")).await.unwrap();
        assert_eq!(status(again), "429", "one client, one bucket");
        let other = exchange(service.public, &get("203.0.113.2")).await.unwrap();
        assert_eq!(status(other), second_client, "trusting {trusted}");
        let logs = service.stop().await;
        assert_eq!(
            logs.contains("\"client.address\":\"203.0.113.1\""),
            trusted == "127.0.0.1",
            "{logs}"
        );
        assert_eq!(
            logs.contains("\"client.address\":\"127.0.0.1\""),
            trusted != "127.0.0.1",
            "{logs}"
        );
    }
}
