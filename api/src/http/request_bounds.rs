//! What a request may take of the service, checked before a handler runs: its body (at most
//! [`BODY_LIMIT`]), its time (the request timeout, body read included), and headers that must
//! be text to apply at all.

use std::time::Duration;

use observability::http::{CloseReason, record_close};
use tokio::time::Instant;

use poem::error::ReadBodyError;
use poem::http::{HeaderValue, Method, header};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};

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
