//! Cross-cutting HTTP concerns of the public listener: checks of what requests bring, and
//! the rendering of every error as problem+json.

use std::sync::Arc;

use poem::error::ReadBodyError;
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response};
use poem_openapi::OperationId;

use crate::error::ApiError;

/// The largest request body accepted (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Checks what every request brings before a handler sees it: refuses bodies over
/// [`BODY_LIMIT`] with 413, whether or not they declare a `Content-Length` (poem's `SizeLimit`
/// refuses requests without one, even bodiless GETs), and conditional headers that are not text.
pub fn check_input<E: Endpoint + 'static>(endpoint: E) -> impl Endpoint<Output = Response> {
    endpoint.around(|endpoint, mut request: Request| async move {
        // poem-openapi reads a header that is not visible ASCII as absent; a conditional
        // header the client did send must not silently stop applying.
        for name in [header::IF_MATCH, header::IF_NONE_MATCH] {
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

/// The methods each route answers, for the `Allow` header a 405 must carry (RFC 9110).
pub struct RouteMethods {
    routes: Vec<(Vec<String>, String)>,
}

impl RouteMethods {
    /// From the spec's paths (`/api/v1/users/{id}`) and the routes outside it.
    pub fn new(spec: &serde_json::Value, extra: &[(&str, &str)]) -> Self {
        let mut routes: Vec<(Vec<String>, String)> = spec["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, operations)| {
                let methods: Vec<String> = operations
                    .as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .map(|method| method.to_ascii_uppercase())
                    .collect();
                (segments(path), methods.join(", "))
            })
            .collect();
        routes.extend(
            extra
                .iter()
                .map(|(path, methods)| (segments(path), (*methods).to_owned())),
        );
        Self { routes }
    }

    fn allowed(&self, path: &str) -> Option<&str> {
        let requested = segments(path);
        self.routes
            .iter()
            .filter(|(template, _)| {
                template.len() == requested.len()
                    && template
                        .iter()
                        .zip(&requested)
                        .all(|(t, r)| t == r || (t.starts_with('{') && !r.is_empty()))
            })
            // A literal route (`/users/lookup`) wins over a parameter (`/users/{id}`).
            .max_by_key(|(template, _)| template.iter().filter(|t| !t.starts_with('{')).count())
            .map(|(_, methods)| methods.as_str())
    }
}

fn segments(path: &str) -> Vec<String> {
    path.trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect()
}

/// Renders every error that reaches the top as problem+json, whoever raised it; a 405 also
/// says which methods the route allows.
pub fn problem_errors<E: Endpoint + 'static>(
    endpoint: E,
    methods: Arc<RouteMethods>,
) -> impl Endpoint<Output = Response> {
    endpoint.around(move |endpoint, request: Request| {
        let methods = Arc::clone(&methods);
        async move {
            let path = request.uri().path().to_owned();
            let error = match endpoint.call(request).await {
                Ok(output) => return Ok(output.into_response()),
                Err(error) => error,
            };
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
            if response.status() == StatusCode::METHOD_NOT_ALLOWED
                && let Some(allow) = methods
                    .allowed(&path)
                    .and_then(|a| HeaderValue::from_str(a).ok())
            {
                response.headers_mut().insert(header::ALLOW, allow);
            }
            Ok(response)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_the_methods_of_the_matching_route() {
        let spec = serde_json::json!({"paths": {
            "/api/v1/users": {"get": {}, "post": {}},
            "/api/v1/users/{id}": {"get": {}, "patch": {}, "delete": {}},
            "/api/v1/users/lookup": {"get": {}},
        }});
        let methods = RouteMethods::new(&spec, &[("/docs", "GET")]);
        assert_eq!(methods.allowed("/api/v1/users"), Some("GET, POST"));
        assert_eq!(
            methods.allowed("/api/v1/users/123"),
            Some("DELETE, GET, PATCH")
        );
        assert_eq!(methods.allowed("/api/v1/users/lookup"), Some("GET"));
        assert_eq!(methods.allowed("/docs"), Some("GET"));
        assert_eq!(methods.allowed("/nope"), None);
    }
}
