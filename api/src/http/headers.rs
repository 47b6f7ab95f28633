//! The headers every response carries, and CORS for browser frontends.

use poem::http::{HeaderValue, Method, header};
use poem::middleware::Cors;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use super::consistency::CONSISTENCY_TOKEN;
use super::idempotency::IDEMPOTENCY_KEY;

/// No MIME sniffing, no framing, no referrer; on the API, no shared caching of personal data
/// (clients revalidate with the ETag); on Swagger UI, a content security policy that admits
/// only its own inline code.
pub struct SecurityHeaders {
    docs_csp: HeaderValue,
}

impl SecurityHeaders {
    pub fn new(docs_csp: &str) -> Self {
        Self {
            docs_csp: HeaderValue::from_str(docs_csp).expect("the CSP is a valid header value"),
        }
    }
}

impl<E: Endpoint> Middleware<E> for SecurityHeaders {
    type Output = SecurityHeadersEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        SecurityHeadersEndpoint {
            inner,
            docs_csp: self.docs_csp.clone(),
        }
    }
}

/// Which part of the service a request is for, as far as its headers go.
enum Area {
    Api,
    Docs,
    Other,
}

pub struct SecurityHeadersEndpoint<E> {
    inner: E,
    docs_csp: HeaderValue,
}

impl<E: Endpoint> Endpoint for SecurityHeadersEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        // Decided before the call: the request (and its path) moves into it.
        let path = request.uri().path();
        let area = if super::is_api_path(path) {
            Area::Api
        } else if path == "/docs" || path.starts_with("/docs/") {
            Area::Docs
        } else {
            Area::Other
        };
        let mut response = match self.inner.call(request).await {
            Ok(output) => output.into_response(),
            Err(error) => error.into_response(),
        };
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        match area {
            Area::Api => {
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-cache"),
                );
            }
            Area::Docs => {
                headers.insert(header::CONTENT_SECURITY_POLICY, self.docs_csp.clone());
            }
            Area::Other => {
                headers.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
                );
            }
        }
        Ok(response)
    }
}

/// CORS for `origins`; `None` when none is configured (no CORS headers at all).
pub fn cors(origins: &[String]) -> Option<Cors> {
    (!origins.is_empty()).then(|| {
        Cors::new()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                "authorization",
                CONSISTENCY_TOKEN.as_str(),
                "content-type",
                IDEMPOTENCY_KEY.as_str(),
                "if-match",
                "if-none-match",
                "x-request-id",
            ])
            .expose_headers([
                CONSISTENCY_TOKEN.as_str(),
                "etag",
                "location",
                "retry-after",
                "x-request-id",
            ])
            .max_age(600)
    })
}
