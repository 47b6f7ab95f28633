//! The one error type of the HTTP layer and its single mapping to a status code and an
//! RFC 9457 `application/problem+json` body.

use std::marker::PhantomData;
use std::time::Duration;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    InvalidRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("missing or unknown bearer token")]
    Unauthorized,
    #[error("this token may not perform this operation")]
    Forbidden,
    #[error("no user has this id")]
    UserNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("another user already has this email")]
    EmailTaken,
    #[error("the user has changed since the version in If-Match")]
    VersionMismatch,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("too many requests")]
    RateLimited { retry_after: Duration },
    #[error("the database is unavailable")]
    DatabaseUnavailable { retry_after: Duration },
    #[error("internal error")]
    Internal,
}

/// One invalid field of a request, in a problem's `errors` list.
#[derive(Clone, Debug, PartialEq, Eq, Object)]
pub struct FieldError {
    /// The field, as named in the request (a JSON member, query or header name).
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem details object.
#[derive(Debug, Object)]
#[oai(rename = "Problem")]
pub struct Problem {
    /// A URI identifying the problem type.
    #[oai(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// A stable snake_case code for clients to switch on.
    pub code: String,
    /// The invalid fields, for validation errors.
    #[oai(skip_serializing_if_is_none)]
    pub errors: Option<Vec<FieldError>>,
}

impl ApiError {
    pub fn invalid(detail: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::InvalidRequest {
            detail: format!("{field}: {message}"),
            errors: vec![FieldError {
                field: field.to_owned(),
                message,
            }],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::UserNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::EmailTaken => StatusCode::CONFLICT,
            ApiError::VersionMismatch => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::DatabaseUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::UserNotFound => "user_not_found",
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::EmailTaken => "email_taken",
            ApiError::VersionMismatch => "version_mismatch",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::DatabaseUnavailable { .. } => "database_unavailable",
            ApiError::Internal => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "Invalid request",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden => "Forbidden",
            ApiError::UserNotFound => "User not found",
            ApiError::RouteNotFound => "Not found",
            ApiError::MethodNotAllowed => "Method not allowed",
            ApiError::EmailTaken => "Email already taken",
            ApiError::VersionMismatch => "Version mismatch",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::RateLimited { .. } => "Rate limited",
            ApiError::DatabaseUnavailable { .. } => "Database unavailable",
            ApiError::Internal => "Internal error",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after }
            | ApiError::DatabaseUnavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn to_problem(&self) -> Problem {
        let errors = match self {
            ApiError::InvalidRequest { errors, .. } if !errors.is_empty() => Some(errors.clone()),
            _ => None,
        };
        Problem {
            kind: format!("urn:user-service:problem:{}", self.code()),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail: self.to_string(),
            code: self.code().to_owned(),
            errors,
        }
    }

    /// Turns an error raised by poem or poem-openapi (a malformed parameter or body, an
    /// unknown route...) into ours, so every error leaves as problem+json.
    pub fn from_poem(error: &poem::Error) -> Self {
        if let Some(api_error) = error.downcast_ref::<ApiError>() {
            return api_error.clone();
        }
        match error.status() {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                let detail = error.to_string();
                match named_field(&detail) {
                    Some(field) => ApiError::InvalidRequest {
                        errors: vec![FieldError {
                            field: field.to_owned(),
                            message: detail.clone(),
                        }],
                        detail,
                    },
                    None => ApiError::invalid(detail),
                }
            }
            StatusCode::NOT_FOUND => ApiError::RouteNotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
                limit: crate::http::BODY_LIMIT,
            },
            _ => ApiError::Internal,
        }
    }
}

/// The field a poem-openapi parse error names ("field `email` verification failed",
/// "failed to parse parameter `limit`"), for the problem's `errors` list.
fn named_field(message: &str) -> Option<&str> {
    ["field `", "parameter `", "header `"]
        .iter()
        .find_map(|marker| {
            let start = message.find(marker)? + marker.len();
            let len = message[start..].find('`')?;
            Some(&message[start..start + len])
        })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_problem().to_json_string();
        let mut response = Response::builder()
            .status(self.status())
            .content_type(PROBLEM_JSON)
            .body(body);
        if let Some(retry_after) = self.retry_after() {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The statuses one operation can answer with an error, so its spec declares exactly those.
pub trait ErrorSet: Send + Sync + 'static {
    const STATUSES: &'static [u16];
}

/// An [`ApiError`] as the error half of an operation's result: it renders as problem+json and
/// declares, in the spec, the statuses of `S` with the `Problem` schema.
pub struct Errors<S: ErrorSet>(pub ApiError, PhantomData<S>);

impl<S: ErrorSet> From<ApiError> for Errors<S> {
    fn from(error: ApiError) -> Self {
        Errors(error, PhantomData)
    }
}

impl From<ApiError> for poem::Error {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        poem::Error::new(error, status)
    }
}

impl<S: ErrorSet> From<Errors<S>> for poem::Error {
    fn from(errors: Errors<S>) -> Self {
        errors.0.into()
    }
}

impl<S: ErrorSet> IntoResponse for Errors<S> {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

impl<S: ErrorSet> ApiResponse for Errors<S> {
    fn meta() -> MetaResponses {
        let responses = S::STATUSES
            .iter()
            .map(|&status| MetaResponse {
                description: describe(status),
                status: Some(status),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: PROBLEM_JSON,
                    schema: Problem::schema_ref(),
                }],
                headers: if matches!(status, 429 | 503) {
                    vec![MetaHeader {
                        name: "Retry-After".to_owned(),
                        description: Some("Seconds to wait before retrying.".to_owned()),
                        required: true,
                        deprecated: false,
                        schema: u64::schema_ref(),
                    }]
                } else {
                    Vec::new()
                },
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

fn describe(status: u16) -> &'static str {
    match status {
        400 => "`invalid_request`: a malformed id, parameter or body, or invalid values.",
        401 => "`unauthorized`: tokens are configured and the request has no valid bearer token.",
        403 => "`forbidden`: the token may read but not write.",
        404 => "`user_not_found`: no user has this id.",
        409 => "`email_taken`: another user has this email (compared case-insensitively).",
        412 => "`version_mismatch`: `If-Match` does not match the user's current ETag.",
        413 => "`payload_too_large`: the body is over 64 KiB.",
        415 => "`unsupported_media_type`: the body is not `application/json`.",
        429 => "`rate_limited`: over the request rate; retry after `Retry-After` seconds.",
        500 => "`internal_error`: an unexpected fault.",
        503 => {
            "`database_unavailable`: the database is slow or down; retry after `Retry-After` seconds."
        }
        _ => "Error.",
    }
}

/// Declares an [`ErrorSet`] marker type.
macro_rules! error_set {
    ($name:ident: $($status:literal),+) => {
        pub struct $name;
        impl $crate::error::ErrorSet for $name {
            const STATUSES: &'static [u16] = &[$($status),+];
        }
    };
}
pub(crate) use error_set;
