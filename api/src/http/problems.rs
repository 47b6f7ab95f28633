//! The catch-all that renders every error reaching the top as problem+json, whoever raised it
//! (a handler, the guard, poem's router or parsers); a 405 also says which methods the route
//! allows.

use std::sync::Arc;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response};
use poem_openapi::OperationId;

use super::error::ApiError;

/// The methods each route answers, for the `Allow` header a 405 must carry (RFC 9110).
pub struct RouteMethods {
    routes: Vec<(Vec<String>, String)>,
}

impl RouteMethods {
    /// From `(path template, methods)` pairs, e.g. `("/api/v1/users/{id}", "GET, PATCH")`.
    pub fn new(routes: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            routes: routes
                .into_iter()
                .map(|(path, methods)| (segments(&path), methods))
                .collect(),
        }
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
        let methods = RouteMethods::new(
            [
                ("/api/v1/users", "GET, POST"),
                ("/api/v1/users/{id}", "DELETE, GET, PATCH"),
                ("/api/v1/users/lookup", "GET"),
                ("/docs", "GET"),
            ]
            .map(|(path, methods)| (path.to_owned(), methods.to_owned())),
        );
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
