//! The one error type of the API and its single mapping to HTTP: each [`ErrorCode`] is one row
//! (status, `code`, title, meaning), and every problem+json body, `Retry-After` header and spec
//! response is derived from that row.

use std::borrow::Cow;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{ApiResponse, Object};
use strum::{EnumIter, IntoEnumIterator};

use super::BODY_LIMIT;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every kind of error the API answers with. Adding one is one variant and its row in
/// [`ErrorCode::row`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    UserNotFound,
    RouteNotFound,
    MethodNotAllowed,
    EmailTaken,
    VersionMismatch,
    ChangesExpired,
    IdempotencyKeyReused,
    IdempotencyInProgress,
    PayloadTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    RateLimited,
    DatabaseUnavailable,
    ProcessingTimeout,
    Internal,
}

/// One error's row: what a client sees and switches on.
pub struct Row {
    pub status: StatusCode,
    /// The stable snake_case `code` of the problem body.
    pub code: &'static str,
    pub title: &'static str,
    /// What it means: the spec's description and the default `detail`.
    pub meaning: &'static str,
    /// Whether the response carries `Retry-After`.
    pub retry: bool,
}

static PAYLOAD_TOO_LARGE: LazyLock<String> =
    LazyLock::new(|| format!("the request body is larger than {} KiB", BODY_LIMIT / 1024));

impl ErrorCode {
    /// The table.
    pub fn row(self) -> Row {
        use ErrorCode::*;
        let (status, code, title, meaning, retry) = match self {
            InvalidRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Invalid request",
                "a malformed id, parameter, header or body, or invalid values",
                false,
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "tokens are configured and the request has no valid bearer token",
                false,
            ),
            Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                "the token may read but not write",
                false,
            ),
            UserNotFound => (
                StatusCode::NOT_FOUND,
                "user_not_found",
                "User not found",
                "no user has this id or email",
                false,
            ),
            RouteNotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "Not found",
                "no such route",
                false,
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                "the route does not take this method; `Allow` lists those it takes",
                false,
            ),
            EmailTaken => (
                StatusCode::CONFLICT,
                "email_taken",
                "Email already taken",
                "another user has this email (compared case-insensitively)",
                false,
            ),
            VersionMismatch => (
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                "Version mismatch",
                "the user has changed since the version in `If-Match`",
                false,
            ),
            ChangesExpired => (
                StatusCode::GONE,
                "changes_expired",
                "Changes expired",
                "the change token is older than the feed's retention: deletions after it may be \
                 forgotten; read the feed again without `since`",
                false,
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                "this `Idempotency-Key` was used for another request; a new request needs a new key",
                false,
            ),
            IdempotencyInProgress => (
                StatusCode::CONFLICT,
                "idempotency_in_progress",
                "Idempotency key in progress",
                "a request with this `Idempotency-Key` is running; retry after `Retry-After` \
                 seconds for its answer",
                true,
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                PAYLOAD_TOO_LARGE.as_str(),
                false,
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "the request body must be `application/json`",
                false,
            ),
            RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request timeout",
                "the request body did not arrive within the request timeout; the connection is closed",
                false,
            ),
            RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limited",
                "over the request rate; retry after `Retry-After` seconds",
                true,
            ),
            DatabaseUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Database unavailable",
                "the database is slow or down; retry after `Retry-After` seconds",
                true,
            ),
            ProcessingTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "processing_timeout",
                "Processing timeout",
                "the service could not answer within the request timeout; a write may or may not \
                 have been applied: re-read before retrying after `Retry-After` seconds",
                true,
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
                "an unexpected fault",
                false,
            ),
        };
        Row {
            status,
            code,
            title,
            meaning,
            retry,
        }
    }

    /// Every row, for the docs test and the spec.
    pub fn all() -> impl Iterator<Item = ErrorCode> {
        Self::iter()
    }
}

/// One error occurrence: its row, what went wrong this time, and when to retry.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    detail: Option<Cow<'static, str>>,
    errors: Vec<FieldError>,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for ApiError {}

impl From<ErrorCode> for ApiError {
    fn from(code: ErrorCode) -> Self {
        Self {
            code,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }
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
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            detail: Some(detail.into()),
            ..code.into()
        }
    }

    pub fn invalid(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            errors: vec![FieldError {
                field: field.to_owned(),
                message: message.clone(),
            }],
            ..Self::invalid(format!("{field}: {message}"))
        }
    }

    /// An error that tells the client when to come back (`Retry-After`).
    pub fn retry_after(code: ErrorCode, wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..code.into()
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.row().status
    }

    pub fn detail(&self) -> &str {
        self.detail
            .as_deref()
            .unwrap_or_else(|| self.code.row().meaning)
    }

    pub fn to_problem(&self) -> Problem {
        let row = self.code.row();
        Problem {
            kind: format!("urn:user-service:problem:{}", row.code),
            title: row.title.to_owned(),
            status: row.status.as_u16(),
            detail: self.detail().to_owned(),
            code: row.code.to_owned(),
            errors: (!self.errors.is_empty()).then(|| self.errors.clone()),
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
                    Some(field) => Self {
                        errors: vec![FieldError {
                            field: field.to_owned(),
                            message: detail.clone(),
                        }],
                        ..Self::invalid(detail)
                    },
                    None => Self::invalid(detail),
                }
            }
            status => ErrorCode::all()
                .filter(|code| *code != ErrorCode::UserNotFound)
                .find(|code| code.row().status == status)
                .unwrap_or(ErrorCode::Internal)
                .into(),
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
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<ApiError> for poem::Error {
    fn from(error: ApiError) -> Self {
        let status = error.status();
        poem::Error::new(error, status)
    }
}

/// The errors an operation can answer with beyond those any `/api/v1` operation can
/// ([`ErrorSet::COMMON`]), so its spec declares exactly those.
pub trait ErrorSet: Send + Sync + 'static {
    const CODES: &'static [ErrorCode];
    /// What any operation of `/api/v1` may answer: the guard's, the database's, a fault (a
    /// write's sets add `Forbidden`: a read-only token may read).
    const COMMON: &'static [ErrorCode] = &[
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::DatabaseUnavailable,
        ErrorCode::ProcessingTimeout,
    ];
}

/// An [`ApiError`] as the error half of an operation's result: it renders as problem+json and
/// declares, in the spec, the responses of `S` with the `Problem` schema.
pub struct Errors<S: ErrorSet>(pub ApiError, PhantomData<S>);

impl<S: ErrorSet> From<ApiError> for Errors<S> {
    fn from(error: ApiError) -> Self {
        Errors(error, PhantomData)
    }
}

impl<S: ErrorSet> From<ErrorCode> for Errors<S> {
    fn from(code: ErrorCode) -> Self {
        ApiError::from(code).into()
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
        let mut codes: Vec<ErrorCode> = S::CODES.iter().chain(S::COMMON).copied().collect();
        codes.sort_by_key(|code| code.row().status);
        // Codes that share a status share its response.
        let responses = codes
            .chunk_by(|a, b| a.row().status == b.row().status)
            .map(|same_status| {
                let row = same_status[0].row();
                MetaResponse {
                    description: description(same_status),
                    status: Some(row.status.as_u16()),
                    status_range: None,
                    content: vec![MetaMediaType {
                        content_type: PROBLEM_JSON,
                        schema: Problem::schema_ref(),
                    }],
                    headers: if same_status.iter().any(|code| code.row().retry) {
                        // Required when every code of the status carries it.
                        let required = same_status.iter().all(|code| code.row().retry);
                        vec![MetaHeader {
                            name: "Retry-After".to_owned(),
                            description: Some(if required {
                                "Seconds to wait before retrying.".to_owned()
                            } else {
                                "Seconds to wait before retrying, with the codes that say so."
                                    .to_owned()
                            }),
                            required,
                            deprecated: false,
                            schema: u64::schema_ref(),
                        }]
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect();
        MetaResponses { responses }
    }

    fn register(registry: &mut Registry) {
        Problem::register(registry);
    }
}

/// "`code`: meaning." for each code of one status, built once per set of codes: the spec
/// wants `&'static str`, and there are only a few such sets.
fn description(codes: &[ErrorCode]) -> &'static str {
    static DESCRIPTIONS: LazyLock<Mutex<HashMap<Vec<&'static str>, &'static str>>> =
        LazyLock::new(Default::default);
    let key: Vec<&'static str> = codes.iter().map(|code| code.row().code).collect();
    let mut descriptions = DESCRIPTIONS.lock().expect("not poisoned");
    descriptions.entry(key).or_insert_with(|| {
        let text: Vec<String> = codes
            .iter()
            .map(|code| {
                let row = code.row();
                format!("`{}`: {}.", row.code, row.meaning)
            })
            .collect();
        Box::leak(text.join(" ").into_boxed_str())
    })
}

/// Declares an [`ErrorSet`]: the codes an operation may answer with beyond the common ones.
macro_rules! error_set {
    ($name:ident: $($code:ident),* $(,)?) => {
        pub struct $name;
        impl $crate::http::error::ErrorSet for $name {
            const CODES: &'static [$crate::http::error::ErrorCode] =
                &[$($crate::http::error::ErrorCode::$code),*];
        }
    };
}
pub(crate) use error_set;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let codes: Vec<&str> = ErrorCode::all().map(|code| code.row().code).collect();
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        for code in codes {
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }

    #[test]
    fn the_size_limit_is_stated_from_the_limit() {
        assert_eq!(
            ErrorCode::PayloadTooLarge.row().meaning,
            "the request body is larger than 64 KiB"
        );
    }
}
