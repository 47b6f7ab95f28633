//! Traces join the rest of the system: a real OTLP/gRPC receiver (tonic serving the
//! opentelemetry-proto trace service) gets the service's spans at shutdown. The caller's W3C
//! trace continues; request spans follow OpenTelemetry's HTTP server conventions and database
//! spans its database client conventions, on both backends; no email or name leaks into an
//! attribute; a 503 marks the span as an error; log lines carry the trace and span ids.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use sea_orm::sqlx::Executor;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::common::binary::{Binary, exchange};
use crate::common::{Backend, TestDb, free_port, lock_users};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC trace receiver on a free port.
async fn receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (sender, received) = mpsc::unbounded_channel();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve(addr),
    );
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (format!("http://{addr}"), received)
}

/// The binary exporting to `otlp`, logging its requests.
async fn start(database_url: &str, otlp: &str, extra: &[(&str, &str)]) -> Binary {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
        ("RUST_LOG", "info,observability::http=debug"),
    ];
    env.extend_from_slice(extra);
    Binary::start(database_url, &env, None).await
}

async fn http(public: SocketAddr, request: &str) -> String {
    exchange(public, request).await.unwrap()
}

/// Every span received so far.
async fn spans(received: &mut mpsc::UnboundedReceiver<ExportTraceServiceRequest>) -> Vec<Span> {
    let mut spans = Vec::new();
    while let Ok(Some(request)) =
        tokio::time::timeout(Duration::from_secs(2), received.recv()).await
    {
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
    }
    spans
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> &'a str {
    match attribute(span, key) {
        Some(AnyValue::StringValue(text)) => text,
        other => panic!("{} has no string {key}: {other:?}", span.name),
    }
}

fn integer(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(AnyValue::IntValue(n)) => *n,
        other => panic!("{} has no integer {key}: {other:?}", span.name),
    }
}

fn traced_get(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: users.test:8080\r\nUser-Agent: trace-test/1\r\n\
         traceparent: 00-{TRACE_ID}-{PARENT_SPAN_ID}-01\r\nConnection: close\r\n\r\n"
    )
}

on_both_backends!(spans_continue_the_callers_trace_with_the_conventions);

async fn spans_continue_the_callers_trace_with_the_conventions(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (otlp, mut received) = receiver().await;
    let service = start(db.url(), &otlp, &[]).await;
    let public = service.public;
    let body = r#"{"email":"TRACE.CANARY@example.com","name":"Canary Tracename"}"#;
    let created = http(
        public,
        &format!(
            "POST /api/v1/users HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = created.split(r#""id":""#).nth(1).unwrap()[..36].to_owned();
    let fetched = http(public, &traced_get(&format!("/api/v1/users/{id}"))).await;
    assert!(fetched.starts_with("HTTP/1.1 200"), "{fetched}");
    let logs = service.stop().await;
    let spans = spans(&mut received).await;

    // The request span: a child of the caller's span, in the caller's trace.
    let server = spans
        .iter()
        .find(|span| span.name == "GET /api/v1/users/{id}")
        .unwrap_or_else(|| panic!("no request span among {:?}", names(&spans)));
    assert_eq!(
        hex(&server.trace_id),
        TRACE_ID,
        "the caller's trace continues"
    );
    assert_eq!(hex(&server.parent_span_id), PARENT_SPAN_ID);
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "http.route"), "/api/v1/users/{id}");
    assert_eq!(integer(server, "http.response.status_code"), 200);
    assert_eq!(text(server, "url.scheme"), "http");
    assert_eq!(text(server, "server.address"), "users.test");
    assert_eq!(integer(server, "server.port"), 8080);
    assert_eq!(text(server, "user_agent.original"), "trace-test/1");
    assert_ne!(
        server.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // Its database span: a child, with the database client conventions.
    let query = spans
        .iter()
        .find(|span| span.parent_span_id == server.span_id)
        .unwrap_or_else(|| {
            panic!(
                "no database span under the request among {:?}",
                names(&spans)
            )
        });
    assert_eq!(query.name, "SELECT users");
    assert_eq!(query.kind, SpanKind::Client as i32);
    assert_eq!(hex(&query.trace_id), TRACE_ID);
    let system = match backend {
        Backend::Postgres | Backend::PgBouncer => "postgresql",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(text(query, "db.system.name"), system);
    assert_eq!(text(query, "db.operation.name"), "SELECT");
    assert_eq!(text(query, "db.collection.name"), "users");
    assert_eq!(text(query, "user_service.operation"), "user.find_by_id");
    let sql = text(query, "db.query.text");
    assert!(
        sql.starts_with("SELECT") && !sql.contains(&id),
        "parameterised: {sql}"
    );

    // The create's spans carry neither the email nor the name.
    for span in &spans {
        for kv in &span.attributes {
            let value = format!("{:?}", kv.value);
            assert!(
                !value.contains("CANARY") && !value.contains("Tracename"),
                "{} {}: {value}",
                span.name,
                kv.key
            );
        }
    }

    // The request's log line carries its trace and span ids.
    let served = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "request served" && line["span"]["trace_id"] == TRACE_ID)
        .unwrap_or_else(|| panic!("no log line of the traced request:\n{logs}"));
    assert_eq!(served["span"]["span_id"], hex(&server.span_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_marks_the_request_and_database_spans_as_errors() {
    let db = TestDb::new(Backend::Postgres).await;
    let (otlp, mut received) = receiver().await;
    let service = start(db.url(), &otlp, &[("DB_STATEMENT_TIMEOUT_MS", "200")]).await;
    let public = service.public;
    let mut locker = lock_users(db.url()).await;
    let response = http(public, &traced_get("/api/v1/users")).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    locker.execute("ROLLBACK").await.unwrap();
    service.stop().await;
    let spans = spans(&mut received).await;
    let server = spans
        .iter()
        .find(|span| span.name == "GET /api/v1/users")
        .unwrap_or_else(|| panic!("no request span among {:?}", names(&spans)));
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(integer(server, "http.response.status_code"), 503);
    let query = spans
        .iter()
        .find(|span| span.parent_span_id == server.span_id)
        .expect("the database span");
    assert_eq!(
        query.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(text(query, "error.type"), "timeout");
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|span| span.name.as_str()).collect()
}
