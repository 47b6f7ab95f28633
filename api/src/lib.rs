//! The user service: [`build`] wires configuration, database and routes into an [`App`];
//! [`run`] serves it until a shutdown signal. `main.rs` and the tests call exactly these.

pub mod config;
pub mod db;
pub mod docs;
pub mod error;
pub mod health;
pub mod http;
pub mod security;
mod server;
pub mod users;

pub use server::{Listeners, run, run_until};

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use governor::DefaultKeyedRateLimiter;
use observability::metrics::Metrics;
use poem::endpoint::BoxEndpoint;
use poem::http::Method;
use poem::middleware::Cors;
use poem::{EndpointExt, Route};
use poem_openapi::{OpenApiService, OperationId};
use sea_orm::{DatabaseConnection, DbErr};

use crate::config::Config;
use crate::docs::Docs;
use crate::health::HealthApi;
use crate::security::{Guard, SecurityHeaders, Tokens};
use crate::users::repository::{OPERATIONS, UserRepository};
use crate::users::routes::UsersApi;

/// A built service: connected, migrated, ready to serve.
pub struct App {
    config: Config,
    db: DatabaseConnection,
    metrics: Metrics,
    rate_limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    public: Arc<BoxEndpoint<'static>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] DbErr),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] DbErr),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}
pub async fn build(config: Config) -> Result<App, StartupError> {
    let db = db::connect(&config).await.map_err(StartupError::Connect)?;
    if config.run_migrations {
        db::migrate(&db).await.map_err(StartupError::Migrate)?;
    }
    let metrics = Metrics::install();
    observability::db::register_operations(&OPERATIONS);
    if config.api_tokens.is_empty() && config.api_read_tokens.is_empty() {
        tracing::warn!(
            "API_TOKENS and API_READ_TOKENS are unset: /api/v1 is open to anyone who can reach it"
        );
    }
    let guard = Guard::new(
        Tokens::new(&config.api_tokens, &config.api_read_tokens),
        config.rate_limit_per_second,
    );
    let rate_limiter = guard.limiter();
    let public = Arc::new(routes(&config, db.clone(), guard));
    Ok(App {
        config,
        db,
        metrics,
        rate_limiter,
        public,
    })
}

impl App {
    /// The public route tree, for poem's test client.
    pub fn endpoint(&self) -> Arc<BoxEndpoint<'static>> {
        Arc::clone(&self.public)
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }
}

fn api_service(
    config: &Config,
    db: DatabaseConnection,
) -> OpenApiService<(UsersApi, HealthApi), ()> {
    let users = UsersApi::new(UserRepository::new(db.clone()), config.pool.acquire_timeout);
    OpenApiService::new(
        (users, HealthApi::new(db)),
        "user-service",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Users: create, read, look up by email, list and search, update, delete.")
}

/// The OpenAPI document the service serves at `/openapi.json`.
pub fn openapi_spec() -> String {
    let config = Config::from_lookup(|_| None).expect("the defaults are valid");
    Docs::new(&api_service(&config, DatabaseConnection::default())).spec
}

fn routes(config: &Config, db: DatabaseConnection, guard: Guard) -> BoxEndpoint<'static> {
    let api = api_service(config, db);
    let docs = Docs::new(&api);
    let templates = route_templates(&docs.document);
    let methods = Arc::new(http::RouteMethods::new(
        &docs.document,
        &[("/openapi.json", "GET"), ("/docs", "GET")],
    ));
    let security_headers = SecurityHeaders::new(&docs.csp);
    let Docs {
        spec, swagger_html, ..
    } = docs;
    let spec_endpoint = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(spec.clone())
    });
    let docs_endpoint = poem::endpoint::make_sync(move |_| poem::web::Html(swagger_html.clone()));
    let route = Route::new()
        .nest("/", api)
        .at("/openapi.json", spec_endpoint)
        .at("/docs", docs_endpoint);
    let cors = (!config.cors_allowed_origins.is_empty()).then(|| {
        Cors::new()
            .allow_origins(config.cors_allowed_origins.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                "authorization",
                "content-type",
                "if-match",
                "if-none-match",
                "x-request-id",
            ])
            .expose_headers(["etag", "location", "retry-after", "x-request-id"])
            .max_age(600)
    });
    // Outermost first: metrics see every final status; the guard refuses before a body is read.
    http::problem_errors(http::check_input(route).with(guard), methods)
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(security_headers)
        .with(observability::http::Observe::new(move |response| {
            let operation = response.data::<OperationId>()?;
            templates.get(operation.0).cloned()
        }))
        .boxed()
}

/// Each operation's path in the spec (`/api/v1/users/{id}`), for the `route` metric label:
/// the router itself knows poem-openapi's renamed parameters (`{param0}`).
fn route_templates(spec: &serde_json::Value) -> HashMap<String, String> {
    let mut templates = HashMap::new();
    for (path, operations) in spec["paths"].as_object().into_iter().flatten() {
        for operation in operations
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, op)| op)
        {
            if let Some(id) = operation["operationId"].as_str() {
                templates.insert(id.to_owned(), path.clone());
            }
        }
    }
    templates
}
