//! Who may call `/api/v1`, how often, from which browser origins; and the headers every
//! response carries.
//!
//! Tokens: `API_TOKENS` may read and write, `API_READ_TOKENS` may only read. Only their
//! SHA-256 digests are kept, and a presented token is compared with every digest in constant
//! time, so neither memory dumps nor timing reveal a token. With no token configured the API is
//! open (`build` warns at start).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use poem::http::{HeaderValue, Method, header};
use poem::web::RemoteAddr;
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub const API_PREFIX: &str = "/api/v1/";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

/// The configured tokens, as digests.
pub struct Tokens {
    digests: Vec<([u8; 32], Access)>,
}

impl Tokens {
    pub fn new(read_write: &[String], read_only: &[String]) -> Self {
        let digest = |token: &String| -> [u8; 32] { Sha256::digest(token.as_bytes()).into() };
        let digests = read_write
            .iter()
            .map(|t| (digest(t), Access::ReadWrite))
            .chain(read_only.iter().map(|t| (digest(t), Access::ReadOnly)))
            .collect();
        Self { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The access of `token`, looking at every digest whatever matches, in constant time.
    fn access(&self, token: &str) -> Option<Access> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (digest, access) in &self.digests {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(*access);
            }
        }
        found
    }
}

/// Authentication and rate limiting of `/api/v1`.
pub struct Guard {
    tokens: Arc<Tokens>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl Guard {
    pub fn new(tokens: Tokens, rate_per_second: Option<NonZeroU32>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            limiter: rate_per_second
                .map(|rate| Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)))),
        }
    }

    /// Forgets idle rate-limit keys; called periodically so one-off clients do not pile up.
    pub fn limiter(&self) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
        self.limiter.clone()
    }
}

impl<E: Endpoint> Middleware<E> for Guard {
    type Output = GuardEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        GuardEndpoint {
            inner,
            tokens: Arc::clone(&self.tokens),
            limiter: self.limiter.clone(),
        }
    }
}

pub struct GuardEndpoint<E> {
    inner: E,
    tokens: Arc<Tokens>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl<E: Endpoint> Endpoint for GuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, request: Request) -> Result<Response> {
        if !request.uri().path().starts_with(API_PREFIX) {
            return Ok(self.inner.call(request).await?.into_response());
        }
        let token = bearer(&request);
        if !self.tokens.is_empty() {
            let access = token.and_then(|token| self.tokens.access(token));
            match access {
                None => return Err(ApiError::Unauthorized.into()),
                Some(Access::ReadOnly) if !is_read(request.method()) => {
                    return Err(ApiError::Forbidden.into());
                }
                Some(_) => {}
            }
        }
        if let Some(limiter) = &self.limiter {
            // Per token when one is presented (a digest: the token itself is kept nowhere),
            // else per client address.
            let key = match token {
                Some(token) => hex(&Sha256::digest(token.as_bytes())),
                None => client_ip(request.remote_addr())
                    .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            };
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ApiError::RateLimited {
                    retry_after: wait.max(Duration::from_secs(1)),
                }
                .into());
            }
        }
        Ok(self.inner.call(request).await?.into_response())
    }
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn client_ip(addr: &RemoteAddr) -> Option<IpAddr> {
    addr.as_socket_addr().map(|socket| socket.ip())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Headers on every response: no MIME sniffing, no framing, no referrer; on the API, no
/// shared caching of personal data (clients revalidate with the ETag); on Swagger UI, a
/// content security policy that admits only its own inline code.
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
        let area = if path.starts_with(API_PREFIX) || path == "/api/v1" {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_digest_with_their_access() {
        let tokens = Tokens::new(&["writer-token".into()], &["reader-token".into()]);
        assert_eq!(tokens.access("writer-token"), Some(Access::ReadWrite));
        assert_eq!(tokens.access("reader-token"), Some(Access::ReadOnly));
        assert_eq!(tokens.access("writer-tokeN"), None);
        assert_eq!(tokens.access(""), None);
        assert!(Tokens::new(&[], &[]).is_empty());
    }
}
