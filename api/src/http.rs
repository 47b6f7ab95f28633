//! Cross-cutting HTTP concerns of the public listener: the body size limit and the rendering
//! of every error as problem+json.

use poem::error::ReadBodyError;
use poem::http::Method;
use poem::{Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response};
use poem_openapi::OperationId;

use crate::error::ApiError;

/// The largest request body accepted (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Refuses bodies over [`BODY_LIMIT`] with 413, whether or not they declare a
/// `Content-Length` (poem's `SizeLimit` refuses requests without one, even bodiless GETs).
pub fn limit_body<E: Endpoint + 'static>(endpoint: E) -> impl Endpoint<Output = Response> {
    endpoint.around(|endpoint, mut request: Request| async move {
        if matches!(
            *request.method(),
            Method::POST | Method::PUT | Method::PATCH
        ) {
            let declared = request
                .headers()
                .get(poem::http::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            if declared.is_some_and(|length| length > BODY_LIMIT as u64) {
                return Err(ApiError::PayloadTooLarge { limit: BODY_LIMIT }.into());
            }
            let body = request
                .take_body()
                .into_bytes_limit(BODY_LIMIT)
                .await
                .map_err(|error| match error {
                    ReadBodyError::PayloadTooLarge => {
                        ApiError::PayloadTooLarge { limit: BODY_LIMIT }.into()
                    }
                    other => poem::Error::from(other),
                })?;
            request.set_body(body);
        }
        Ok(endpoint.call(request).await?.into_response())
    })
}

/// Renders every error that reaches the top as problem+json, whoever raised it.
pub fn problem_errors<E: Endpoint + 'static>(endpoint: E) -> impl Endpoint<Output = Response> {
    endpoint
        .map_to_response()
        .catch_all_error(|error: poem::Error| async move {
            // Keep the matched route on the response, for the HTTP metrics' `route` label.
            let pattern = error.data::<PathPattern>().cloned();
            let operation = error.data::<OperationId>().copied();
            let mut response = if error.is_from_response() {
                error.into_response()
            } else {
                ApiError::from_poem(&error).into_response()
            };
            if let Some(pattern) = pattern {
                response.set_data(pattern);
            }
            if let Some(operation) = operation {
                response.set_data(operation);
            }
            response
        })
}
