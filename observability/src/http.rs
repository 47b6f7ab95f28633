//! HTTP middleware: one span per request (OpenTelemetry's HTTP server conventions, continuing
//! the caller's W3C trace), with its request id, and the request metrics; and the connection
//! metrics of the public listener.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt;
use poem::PathPattern;
use poem::http::header::{HOST, USER_AGENT};
use poem::http::{HeaderName, HeaderValue, Method, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const REQUESTS: &str = "http_server_requests_total";
pub const DURATION: &str = "http_server_request_duration_seconds";

pub const OPEN_CONNECTIONS: &str = "http_server_open_connections";
pub const MAX_CONNECTIONS: &str = "http_server_max_connections";
pub const CONNECTIONS_CLOSED: &str = "http_server_connections_closed_total";
pub const ACCEPT_ERRORS: &str = "http_server_accept_errors_total";

/// Why the service closed a client connection, as counted in
/// `http_server_connections_closed_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `HTTP_HEADER_TIMEOUT_SECS`.
    HeaderTimeout,
    /// Idle keep-alive past `HTTP_IDLE_TIMEOUT_SECS`.
    IdleTimeout,
    /// The request body did not arrive within `HTTP_REQUEST_TIMEOUT_SECS` (answered 408).
    RequestTimeout,
}

impl CloseReason {
    pub const ALL: [CloseReason; 3] = [
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::RequestTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::RequestTimeout => "request_timeout",
        }
    }
}

/// Registers the connection series at 0 (so alerts and panels read 0, not "no data") and the
/// connection cap.
pub fn record_max_connections(max: u32) {
    metrics::gauge!(MAX_CONNECTIONS).set(max);
    metrics::gauge!(OPEN_CONNECTIONS).increment(0.0);
    metrics::counter!(ACCEPT_ERRORS).absolute(0);
    for reason in CloseReason::ALL {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(0);
    }
}

pub fn record_connection_opened() {
    metrics::gauge!(OPEN_CONNECTIONS).increment(1.0);
}

pub fn record_connection_closed() {
    metrics::gauge!(OPEN_CONNECTIONS).decrement(1.0);
}

pub fn record_close(reason: CloseReason) {
    metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(1);
}

/// An accept that failed for lack of descriptors or memory.
pub fn record_accept_error() {
    metrics::counter!(ACCEPT_ERRORS).increment(1);
}

/// The `route` label of requests that matched no route: never the raw path, whose ids and
/// typos would make a series each.
pub const UNMATCHED: &str = "unmatched";

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Names the route template a response came from, where the router's own pattern is not the
/// one to show (poem-openapi renames path parameters to `param0`...).
pub type RouteOf = dyn Fn(&Response) -> Option<String> + Send + Sync;

/// Times every request, labels it with its route template, and runs it in a span that carries
/// the request id (the caller's `x-request-id` if usable, else a new one, echoed back).
pub struct Observe {
    route_of: Arc<RouteOf>,
}

impl Observe {
    pub fn new(route_of: impl Fn(&Response) -> Option<String> + Send + Sync + 'static) -> Self {
        Self {
            route_of: Arc::new(route_of),
        }
    }
}

impl<E: Endpoint> Middleware<E> for Observe {
    type Output = ObserveEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ObserveEndpoint {
            inner,
            route_of: Arc::clone(&self.route_of),
        }
    }
}

pub struct ObserveEndpoint<E> {
    inner: E,
    route_of: Arc<RouteOf>,
}

impl<E: Endpoint> Endpoint for ObserveEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        let started = Instant::now();
        let method = request.method().clone();
        let request_id = request
            .headers()
            .get(&REQUEST_ID)
            .filter(|value| usable_request_id(value))
            .cloned()
            .unwrap_or_else(|| {
                HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                    .expect("a UUID is a header value")
            });
        let span = server_span(&request, &method, &request_id);
        let mut response = match self.inner.call(request).instrument(span.clone()).await {
            Ok(output) => output.into_response(),
            Err(error) => error.into_response(),
        };
        let route = (self.route_of)(&response)
            .or_else(|| {
                response
                    .data::<PathPattern>()
                    .filter(|pattern| {
                        !pattern.0.is_empty() && response.status() != StatusCode::NOT_FOUND
                    })
                    .map(|pattern| template(&pattern.0))
            })
            .unwrap_or_else(|| UNMATCHED.to_owned());
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        // The span's OpenTelemetry side exists since its parent was set: rename it there.
        span.context()
            .span()
            .update_name(format!("{method} {route}"));
        span.record("http.route", route.as_str());
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            span.record("otel.status_code", "error");
            span.record("error.type", status);
        }
        let labels = [
            ("method", method.as_str().to_owned()),
            ("route", route),
            ("status", status.to_string()),
        ];
        metrics::counter!(REQUESTS, &labels).increment(1);
        metrics::histogram!(DURATION, &labels).record(elapsed.as_secs_f64());
        span.in_scope(|| {
            let latency_ms = elapsed.as_secs_f64() * 1000.0;
            if status >= 500 {
                tracing::warn!(status, latency_ms, "request failed");
            } else {
                tracing::debug!(status, latency_ms, "request served");
            }
        });
        response.headers_mut().insert(REQUEST_ID, request_id);
        Ok(response)
    }
}

/// The request's span, following OpenTelemetry's HTTP server conventions (kind SERVER, named
/// `{method} {route}` once the route is known), continuing the caller's trace when it sent a
/// W3C `traceparent`. Its trace and span ids are fields too, so every log line inside the
/// request carries them.
fn server_span(request: &Request, method: &Method, request_id: &HeaderValue) -> Span {
    let headers = request.headers();
    let (address, port) = server_address(request);
    let span = tracing::info_span!(
        "http.server.request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        url.scheme = request.scheme().as_str(),
        server.address = address.as_deref(),
        server.port = port.map(i64::from),
        user_agent.original = headers.get(USER_AGENT).and_then(|v| v.to_str().ok()),
        // Recorded by the service, which knows which proxies to believe.
        client.address = tracing::field::Empty,
        request_id = request_id.to_str().unwrap_or_default(),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    });
    // Fails only when no OpenTelemetry layer is installed: nothing to continue then.
    let _ = span.set_parent(parent);
    crate::telemetry::record_trace_ids(&span);
    span
}

/// `server.address` and `server.port`: the `Host` the client asked for, else the listener's.
fn server_address(request: &Request) -> (Option<String>, Option<u16>) {
    let host = request
        .headers()
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .and_then(|host| host.parse::<poem::http::uri::Authority>().ok());
    match host {
        Some(authority) => (Some(authority.host().to_owned()), authority.port_u16()),
        None => match request.local_addr().as_socket_addr() {
            Some(addr) => (Some(addr.ip().to_string()), Some(addr.port())),
            None => (None, None),
        },
    }
}

/// Reads W3C trace context from poem's headers.
struct HeaderExtractor<'a>(&'a poem::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// A request id worth echoing: short, visible ASCII (it goes into logs and a header).
fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// poem's pattern (`/api/v1/users/:id`, `/docs/*path`) in OpenAPI's notation
/// (`/api/v1/users/{id}`), as dashboards show it.
fn template(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None if segment.starts_with('*') => "{*}".to_owned(),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_use_openapi_notation() {
        assert_eq!(template("/api/v1/users/:id"), "/api/v1/users/{id}");
        assert_eq!(template("/api/v1/users"), "/api/v1/users");
        assert_eq!(template("/docs/*path"), "/docs/{*}");
    }

    #[test]
    fn request_ids_are_checked() {
        assert!(usable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!usable_request_id(&HeaderValue::from_static("")));
        assert!(!usable_request_id(&HeaderValue::from_static("has space")));
        assert!(!usable_request_id(
            &HeaderValue::from_str(&"x".repeat(129)).unwrap()
        ));
    }
}
