//! Checks of what requests bring: the body limit, conditional headers and consistency tokens
//! of every request, and the text rules that typed inputs are checked against.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::Duration;

use observability::http::{CloseReason, record_close};
use tokio::time::Instant;

use poem::error::ReadBodyError;
use poem::http::{HeaderValue, Method, header};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use super::BODY_LIMIT;
use super::consistency::CONSISTENCY_TOKEN;
use super::error::{ApiError, ErrorCode};
use super::idempotency::IDEMPOTENCY_KEY;

/// Refuses bodies over [`BODY_LIMIT`] with 413, whether or not they declare a `Content-Length`
/// (poem's `SizeLimit` refuses requests without one, even bodiless GETs), and conditional
/// headers that are not text. Bounds the whole request by `request_timeout`: a body still
/// incomplete then is a 408 and the connection is closed (the handler never sees it); a handler
/// still running then is a 503 and its work is dropped.
pub fn check_input<E: Endpoint + 'static>(
    endpoint: E,
    request_timeout: Duration,
) -> impl Endpoint<Output = Response> {
    endpoint.around(move |endpoint, mut request: Request| async move {
        let deadline = Instant::now() + request_timeout;
        // poem-openapi reads a header that is not visible ASCII as absent; a conditional
        // header, a consistency token or an idempotency key the client did send must not
        // silently stop applying.
        let checked = [
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            CONSISTENCY_TOKEN,
            IDEMPOTENCY_KEY,
        ];
        for name in checked {
            if request
                .headers()
                .get(&name)
                .is_some_and(|value| value.to_str().is_err())
            {
                return Err(ApiError::invalid_field(name.as_str(), "must be visible ASCII").into());
            }
        }
        if matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH
        ) {
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
                return Err(ApiError::from(ErrorCode::PayloadTooLarge).into());
            }
            // Boxed: hyper's body future is kilobytes, and this middleware's future is part of
            // every request's, reads included (`db::observe` says why that matters).
            let read = Box::pin(request.take_body().into_bytes_limit(BODY_LIMIT));
            let body = match tokio::time::timeout_at(deadline, read).await {
                Ok(body) => body.map_err(|error| match error {
                    ReadBodyError::PayloadTooLarge => {
                        ApiError::from(ErrorCode::PayloadTooLarge).into()
                    }
                    other => poem::Error::from(other),
                })?,
                Err(_) => return Ok(body_timed_out()),
            };
            request.set_body(body);
        }
        match tokio::time::timeout_at(deadline, endpoint.call(request)).await {
            Ok(response) => Ok(response?.into_response()),
            // What the handler had sent to the database either commits or not; the client is
            // told 503, as when a connection is lost (docs/api.md).
            Err(_) => Err(ApiError::retry_after(ErrorCode::ProcessingTimeout, RETRY_AFTER).into()),
        }
    })
}

/// How long a client should wait after a request timed out in the handler.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// 408, and the connection closed: what is left of the body would be read as the next request.
fn body_timed_out() -> Response {
    record_close(CloseReason::RequestTimeout);
    let mut response = ApiError::from(ErrorCode::RequestTimeout).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A rule for a text input: its limits and pattern, written once. The spec's schema and the
/// server's check are both derived from it, and the pattern is compiled once per process
/// (poem-openapi's `validator(pattern)` compiles it on every request).
pub trait TextRule: Send + Sync + 'static {
    /// The JSON member or parameter it usually guards, for error messages.
    const FIELD: &'static str;
    const MIN_CHARS: Option<usize> = None;
    const MAX_CHARS: Option<usize> = None;
    /// An ECMA-262 and Rust `regex` compatible pattern, anchored.
    const PATTERN: &'static str;
    /// What a valid value is, for error messages.
    const EXPECTED: &'static str;
    /// The compiled [`Self::PATTERN`]: a `static` of the implementation, so each rule
    /// compiles once.
    fn regex() -> &'static regex::Regex;

    fn check(text: &str) -> Result<(), String> {
        let chars = text.chars().count();
        let fits = Self::MAX_CHARS.is_none_or(|max| chars <= max)
            && Self::MIN_CHARS.is_none_or(|min| chars >= min)
            && Self::regex().is_match(text);
        if fits {
            Ok(())
        } else {
            Err(format!("must be {}", Self::EXPECTED))
        }
    }
}

/// Compiles a rule's pattern; a `static` per rule holds it.
pub fn compile(pattern: &str) -> regex::Regex {
    regex::Regex::new(pattern).expect("a rule's pattern compiles")
}

/// A string that passed the rule `R`. Only a JSON string is accepted: poem-openapi's `String`
/// also takes a number or a boolean (`{"name": false}` would become the name "false"), which
/// the schema (`type: string`) does not allow.
pub struct Checked<R: TextRule>(String, PhantomData<R>);

impl<R: TextRule> Checked<R> {
    pub fn parse(text: String) -> Result<Self, String> {
        R::check(&text)?;
        Ok(Self(text, PhantomData))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<R: TextRule> std::fmt::Debug for Checked<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Rules guard personal data: never in a log line.
        write!(f, "{}(..)", R::FIELD)
    }
}

impl<R: TextRule> Type for Checked<R> {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> Cow<'static, str> {
        "string".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            min_length: R::MIN_CHARS,
            max_length: R::MAX_CHARS,
            pattern: Some(R::PATTERN.to_owned()),
            ..MetaSchema::new("string")
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl<R: TextRule> ParseFromJSON for Checked<R> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            // Names the field the way poem-openapi's own validators do, for `errors`.
            Some(Value::String(text)) => Self::parse(text)
                .map_err(|message| ParseError::custom(format!("field `{}` {message}", R::FIELD))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl<R: TextRule> ParseFromParameter for Checked<R> {
    fn parse_from_parameter(value: &str) -> ParseResult<Self> {
        Self::parse(value.to_owned()).map_err(ParseError::custom)
    }
}

impl<R: TextRule> ToJSON for Checked<R> {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}
