//! Everything HTTP that is not about users: problem+json errors, a request's bounds (body,
//! time), typed text inputs, the client's address behind proxies, the auth guard and rate
//! limit, security headers and CORS, pre-encoded JSON bodies, consistency tokens, idempotency
//! keys' grammar, and the spec with Swagger UI.

pub mod auth;
pub mod client_address;
pub mod connections;
pub mod consistency;
pub mod encoded_json;
pub mod error;
pub mod headers;
pub mod idempotency;
pub mod problems;
pub mod rate_limit;
pub mod request_bounds;
pub mod spec;
pub mod text_rule;

/// The base path of the versioned API, written in full in every path of the spec.
pub const API_PREFIX: &str = "/api/v1";

/// The largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Whether `path` is under [`API_PREFIX`] (the path itself or below it).
pub fn is_api_path(path: &str) -> bool {
    path.strip_prefix(API_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_paths_are_the_prefix_and_below() {
        assert!(super::is_api_path("/api/v1"));
        assert!(super::is_api_path("/api/v1/users"));
        assert!(!super::is_api_path("/api/v10/users"));
        assert!(!super::is_api_path("/health/live"));
    }
}
