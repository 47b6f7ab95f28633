//! [`App`]: the route tree, the middleware stack and the shared state of a built service.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use observability::metrics::Metrics;
use poem::endpoint::BoxEndpoint;
use poem::{EndpointExt, Route};
use poem_openapi::{ContactObject, LicenseObject, OpenApiService, OperationId, ServerObject};

use crate::cache::Cache;
use crate::config::Config;
use crate::db::{self, Database, Operation};
use crate::health::HealthApi;
use crate::http::auth::{Guard, Tokens};
use crate::http::client_address::ResolveClient;
use crate::http::headers::{SecurityHeaders, cors};
use crate::http::rate_limit::RateLimit;
use crate::http::spec::{Auth, DOCS_PATH, SPEC_PATH, Spec};
use crate::http::{problems, request_bounds};
use crate::users::repository::UserRepository;
use crate::users::routes::UsersApi;
use crate::users::service::UserService;

/// A built service: connected, migrated, ready to serve.
pub struct App {
    pub(crate) config: Config,
    pub(crate) db: Database,
    pub(crate) metrics: Metrics,
    cache: Option<Cache>,
    public: Arc<BoxEndpoint<'static>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] db::ConnectFailure),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[source] db::MigrateError),
    #[error("cache (REDIS_URL): {0}")]
    Cache(#[source] redis::RedisError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

pub async fn build(config: Config) -> Result<App, StartupError> {
    let db = Box::pin(Database::connect(&config))
        .await
        .map_err(StartupError::Connect)?;
    if config.run_migrations {
        db.migrate(config.migration_lock_timeout)
            .await
            .map_err(StartupError::Migrate)?;
    }
    let metrics = Metrics::install();
    Operation::register_all();
    if let Some(replica) = &config.replica {
        observability::db::register_replica(replica.max_lag);
    }
    let cache = match &config.cache {
        Some(cache) => {
            let cache = Cache::new(cache).map_err(StartupError::Cache)?;
            cache.warm_up().await;
            Some(cache)
        }
        None => None,
    };
    let public = Arc::new(routes(&config, db.clone(), cache.clone()));
    Ok(App {
        config,
        db,
        metrics,
        cache,
        public,
    })
}

impl App {
    /// The public route tree, for poem's test client.
    pub fn endpoint(&self) -> Arc<BoxEndpoint<'static>> {
        Arc::clone(&self.public)
    }

    /// The cache client, when `REDIS_URL` is set.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }
}

fn api_service(
    config: &Config,
    db: Database,
    cache: Option<Cache>,
) -> OpenApiService<(UsersApi, HealthApi), ()> {
    let store = UserService::new(UserRepository::new(&db), cache);
    let users = UsersApi::new(
        store,
        config.pool.acquire_timeout,
        config.request_timeout,
        config.idempotency_ttl,
    );
    OpenApiService::new(
        (users, HealthApi::new(db)),
        "user-service",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Users: create, read, look up by email, list and search, update, delete.")
    .license(LicenseObject::new(env!("CARGO_PKG_LICENSE")).url(concat!(
        "https://spdx.org/licenses/",
        env!("CARGO_PKG_LICENSE"),
        ".html"
    )))
    .contact(ContactObject::new().name("user-service maintainers"))
    // Relative: the spec is served by the API it describes (`/openapi.json`).
    .server(ServerObject::new("/").description("the instance serving this document"))
}

/// The OpenAPI document of a production instance (tokens configured), as committed in
/// `openapi.json`.
pub fn openapi_spec() -> String {
    let config = Config::from_lookup(|_| None).expect("the defaults are valid");
    Spec::new(
        &api_service(&config, Database::disconnected(), None),
        Auth::Required,
    )
    .text
}

fn routes(config: &Config, db: Database, cache: Option<Cache>) -> BoxEndpoint<'static> {
    let tokens = Tokens::new(&config.api_tokens, &config.api_read_tokens);
    let auth = if tokens.is_empty() {
        tracing::warn!(
            "API_TOKENS and API_READ_TOKENS are unset: /api/v1 is open to anyone who can reach it"
        );
        Auth::Open
    } else {
        Auth::Required
    };
    let guard = Guard::new(tokens, config.rate_limit_per_second.map(RateLimit::new));
    let api = api_service(config, db, cache);
    let Spec {
        text,
        swagger_html,
        csp,
        templates,
        methods,
    } = Spec::new(&api, auth);
    let spec_endpoint = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(text.clone())
    });
    let docs_endpoint = poem::endpoint::make_sync(move |_| poem::web::Html(swagger_html.clone()));
    let route = Route::new()
        .nest("/", api)
        .at(SPEC_PATH, spec_endpoint)
        .at(DOCS_PATH, docs_endpoint);
    let cors = cors(&config.cors_allowed_origins);
    // Outermost first: metrics see every final status; the guard refuses before a body is read.
    problems::problem_errors(
        request_bounds::check_input(route, config.request_timeout).with(guard),
        Arc::new(methods),
    )
    .with_if(cors.is_some(), cors.unwrap_or_default())
    .with(SecurityHeaders::new(&csp))
    .with(ResolveClient::new(&config.trusted_proxies))
    .with(observability::http::Observe::new(move |response| {
        let operation = response.data::<OperationId>()?;
        templates.get(operation.0).cloned()
    }))
    .boxed()
}
