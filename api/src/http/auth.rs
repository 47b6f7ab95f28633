//! Who may call `/api/v1`, and how often.
//!
//! Tokens: `API_TOKENS` may read and write, `API_READ_TOKENS` may only read. Only their
//! SHA-256 digests are kept (the configuration digests them as it reads them), and a presented
//! token is compared with every digest in constant
//! time, so neither memory dumps nor timing reveal a token. With no token configured the API is
//! open (`build` warns at start, and the served spec says so).

use std::net::IpAddr;
use std::sync::Arc;

use poem::http::{Method, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};
use subtle::ConstantTimeEq;

use super::client_address::ClientAddress;
use super::error::{ApiError, ErrorCode};
use super::rate_limit::RateLimit;
use crate::config::TokenDigest;

/// The one definition of what the guard protects; the spec declares `bearerAuth` on exactly
/// these paths.
pub fn is_guarded(path: &str) -> bool {
    super::is_api_path(path)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    ReadWrite,
    ReadOnly,
}

/// The configured tokens, as digests.
pub struct Tokens {
    digests: Vec<(TokenDigest, Access)>,
}

impl Tokens {
    pub fn new(read_write: &[TokenDigest], read_only: &[TokenDigest]) -> Self {
        let digests = read_write
            .iter()
            .map(|digest| (*digest, Access::ReadWrite))
            .chain(read_only.iter().map(|digest| (*digest, Access::ReadOnly)))
            .collect();
        Self { digests }
    }

    /// No token configured: the API is open.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The access of a presented token (its digest), looking at every digest whatever
    /// matches, in constant time.
    fn access(&self, presented: &TokenDigest) -> Option<Access> {
        let mut found = None;
        for (digest, access) in &self.digests {
            if bool::from(digest.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(*access);
            }
        }
        found
    }
}

/// Authentication and rate limiting of the guarded paths.
#[derive(Clone)]
pub struct Guard {
    tokens: Arc<Tokens>,
    rate_limit: Option<RateLimit>,
}

impl Guard {
    pub fn new(tokens: Tokens, rate_limit: Option<RateLimit>) -> Self {
        Self {
            tokens: Arc::new(tokens),
            rate_limit,
        }
    }
}

impl<E: Endpoint> Middleware<E> for Guard {
    type Output = GuardEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        GuardEndpoint {
            inner,
            guard: self.clone(),
        }
    }
}

pub struct GuardEndpoint<E> {
    inner: E,
    guard: Guard,
}

impl<E: Endpoint> Endpoint for GuardEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut request: Request) -> Result<Response> {
        if is_guarded(request.uri().path()) {
            let principal = Principal::of(&request);
            self.admit(&request, &principal)?;
            request.extensions_mut().insert(principal);
        }
        Ok(self.inner.call(request).await?.into_response())
    }
}

impl<E> GuardEndpoint<E> {
    fn admit(&self, request: &Request, principal: &Principal) -> Result<(), ApiError> {
        let tokens = &self.guard.tokens;
        if !tokens.is_empty() {
            let token = match principal {
                Principal::Token(token) => Some(token),
                Principal::Client(_) => None,
            };
            match token.and_then(|token| tokens.access(token)) {
                None => return Err(ErrorCode::Unauthorized.into()),
                Some(Access::ReadOnly) if !is_read(request.method()) => {
                    return Err(ErrorCode::Forbidden.into());
                }
                Some(_) => {}
            }
        }
        if let Some(rate_limit) = &self.guard.rate_limit {
            rate_limit.check(principal.key())?;
        }
        Ok(())
    }
}

/// Whom a request of the API acts for: the bearer token it presents (its digest: the token
/// itself is kept nowhere), else the client's address. The rate limit counts per principal
/// and idempotency keys are scoped to one; in the request's extensions past the guard.
#[derive(Clone, Debug)]
pub enum Principal {
    Token(TokenDigest),
    Client(Option<IpAddr>),
}

impl Principal {
    fn of(request: &Request) -> Self {
        // Digested once, for the check, the rate limit and the keys' scope.
        match bearer(request) {
            Some(token) => Principal::Token(TokenDigest::of(token)),
            None => Principal::Client(
                request
                    .extensions()
                    .get::<ClientAddress>()
                    .map(|client| client.0),
            ),
        }
    }

    /// One text per principal, never the same for two (a digest is hex, an address is not).
    pub fn key(&self) -> String {
        match self {
            Principal::Token(token) => hex::encode(token.as_bytes()),
            Principal::Client(Some(address)) => address.to_string(),
            Principal::Client(None) => "unknown".to_owned(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_by_digest_with_their_access() {
        let tokens = Tokens::new(
            &[TokenDigest::of("writer-token")],
            &[TokenDigest::of("reader-token")],
        );
        assert_eq!(
            tokens.access(&TokenDigest::of("writer-token")),
            Some(Access::ReadWrite)
        );
        assert_eq!(
            tokens.access(&TokenDigest::of("reader-token")),
            Some(Access::ReadOnly)
        );
        assert_eq!(tokens.access(&TokenDigest::of("writer-tokeN")), None);
        assert_eq!(tokens.access(&TokenDigest::of("")), None);
        assert!(Tokens::new(&[], &[]).is_empty());
    }
}
