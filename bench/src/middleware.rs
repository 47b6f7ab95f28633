//! What each middleware costs: the service's own layers, each alone around an endpoint that
//! answers at once, called in-process (no socket) on one thread, timed by that thread's CPU
//! clock (what other processes do on the shared cores does not count). The same for the whole
//! stack, and for the real route tree on a trivial route and on a GET by id. Medians of rounds.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use api::config::TokenDigest;
use api::http::auth::{Guard, Tokens};
use api::http::headers::SecurityHeaders;
use api::http::problems::{RouteMethods, problem_errors};
use api::http::rate_limit::RateLimit;
use poem::endpoint::BoxEndpoint;
use poem::{Endpoint, EndpointExt, Request};

/// Calls per round of a full run.
pub const CALLS: u32 = 20_000;
const ROUNDS: usize = 5;
const TOKEN: &str = "bench-token-0123456789abcdef";

pub struct Cost {
    pub what: &'static str,
    /// CPU microseconds per request.
    pub micros: f64,
}

fn trivial() -> BoxEndpoint<'static> {
    poem::endpoint::make_sync(|_| "ok")
        .map_to_response()
        .boxed()
}

/// The layers as `app.rs` configures them, each on its own around [`trivial`].
fn layers() -> Vec<(&'static str, BoxEndpoint<'static>)> {
    let tokens = || Tokens::new(&[TokenDigest::of(TOKEN)], &[]);
    let observe = || observability::http::Observe::new(|_| None);
    vec![
        ("endpoint alone", trivial()),
        (
            "request metrics and span (observability::http)",
            trivial().with(observe()).boxed(),
        ),
        (
            "security headers",
            trivial()
                .with(SecurityHeaders::new("default-src 'none'"))
                .boxed(),
        ),
        (
            "problem+json mapping",
            problem_errors(trivial(), Arc::new(RouteMethods::new([]))).boxed(),
        ),
        (
            "input checks and request timeout",
            api::http::request_bounds::check_input(trivial(), Duration::from_secs(30)).boxed(),
        ),
        (
            "auth (bearer token)",
            trivial().with(Guard::new(tokens(), None)).boxed(),
        ),
        (
            "auth and rate limit",
            trivial()
                .with(Guard::new(
                    tokens(),
                    Some(RateLimit::new(1_000_000_000.try_into().expect("non-zero"))),
                ))
                .boxed(),
        ),
        (
            "all of them",
            problem_errors(
                api::http::request_bounds::check_input(trivial(), Duration::from_secs(30))
                    .with(Guard::new(tokens(), None)),
                Arc::new(RouteMethods::new([])),
            )
            .with(SecurityHeaders::new("default-src 'none'"))
            .with(observe())
            .boxed(),
        ),
    ]
}

/// CPU time of this thread.
fn thread_cpu() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Median CPU microseconds of one request to `endpoint` at `uri`.
async fn per_request(
    endpoint: &impl Endpoint<Output = poem::Response>,
    uri: &str,
    calls: u32,
) -> Result<f64> {
    let request = || {
        Request::builder()
            .uri_str(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("host", "bench")
            .finish()
    };
    // Warm: statements prepared, caches filled.
    for _ in 0..calls / 10 {
        endpoint
            .call(request())
            .await?
            .into_body()
            .into_bytes()
            .await?;
    }
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let started = thread_cpu();
        for _ in 0..calls {
            let response = endpoint.call(request()).await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{uri}: {}",
                response.status()
            );
            response.into_body().into_bytes().await?;
        }
        rounds.push((thread_cpu() - started).as_secs_f64() * 1e6 / f64::from(calls));
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[ROUNDS / 2])
}

/// Each layer's cost over the bare endpoint, the whole stack's, and the real route tree's on
/// `/health/live` and on a GET by id of `user` (the service built on `database_url`, tokens
/// required as in production). Runs on a current-thread runtime of its own: everything the
/// request does, the database connection's task included, is on the timed thread.
pub fn measure(database_url: &str, user: uuid::Uuid, calls: u32) -> Result<Vec<Cost>> {
    // The production recorder: metrics cost what they cost in production.
    observability::metrics::Metrics::install();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut costs = Vec::new();
        let mut bare = 0.0;
        for (what, endpoint) in layers() {
            let micros = per_request(&endpoint, "/", calls).await?;
            if what == "endpoint alone" {
                bare = micros;
                costs.push(Cost { what, micros });
            } else {
                costs.push(Cost {
                    what,
                    micros: micros - bare,
                });
            }
        }
        let config = api::config::Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some(database_url.to_owned()),
            "API_TOKENS" => Some(TOKEN.to_owned()),
            "RUN_MIGRATIONS" => Some("false".to_owned()),
            _ => None,
        })?;
        let app = api::build(config).await?;
        let endpoint = app.endpoint();
        costs.push(Cost {
            what: "the service: GET /health/live",
            micros: per_request(&*endpoint, "/health/live", calls).await?,
        });
        costs.push(Cost {
            what: "the service: GET /api/v1/users/{id} (with the database's reply)",
            micros: per_request(&*endpoint, &format!("/api/v1/users/{user}"), calls).await?,
        });
        Ok(costs)
    })
}

pub fn markdown(costs: &[Cost], calls: u32) -> Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "## What each middleware costs (in-process, CPU time of one thread)\n\nEach layer alone around an endpoint that answers at once, called {calls} times in-process (no socket), median of {ROUNDS} rounds; a layer's cost is its time less the bare endpoint's. Then the real route tree (tokens required, as in production) on a trivial route and on a GET by id, where the database connection's task runs on the same thread.\n"
    )?;
    writeln!(md, "| layer | CPU us per request |\n| --- | ---: |")?;
    for cost in costs {
        writeln!(md, "| {} | {:.2} |", cost.what, cost.micros)?;
    }
    writeln!(md)?;
    Ok(md)
}
