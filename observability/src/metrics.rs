//! The process-wide Prometheus recorder and the text it renders for `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_process::Collector;

/// Latency buckets for a fast service: 0.5 ms to 5 s. Set, so that latencies render as
/// Prometheus histograms (aggregatable across instances), not as summaries.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0,
];

/// How often histogram buckets are drained and idle series trimmed.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The installed recorder. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

struct Installed {
    metrics: Metrics,
    process: Collector,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

impl Metrics {
    /// Installs the global recorder on first call; later calls (tests build many apps in one
    /// process) return the same one.
    pub fn install() -> Metrics {
        INSTALLED
            .get_or_init(|| {
                let handle = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_seconds".to_owned()),
                        &LATENCY_BUCKETS,
                    )
                    .expect("the buckets are not empty")
                    .install_recorder()
                    .expect("no other metrics recorder is installed");
                let process = Collector::default();
                process.describe();
                describe();
                Installed {
                    metrics: Metrics { handle },
                    process,
                }
            })
            .metrics
            .clone()
    }

    /// The exposition text, with process metrics read now.
    pub fn render(&self) -> String {
        if let Some(installed) = INSTALLED.get() {
            installed.process.collect();
        }
        self.handle.render()
    }

    /// Drains histogram buckets; `install_recorder` leaves this to the caller.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn describe() {
    use crate::{cache, db, http};
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        db::QUERY_DURATION,
        Unit::Seconds,
        "Database operation latency, by operation and outcome."
    );
    describe_counter!(db::ERRORS, "Database errors, by operation and kind.");
    describe_counter!(
        cache::REQUESTS,
        "Cache calls, by operation and result (hit, miss, ok, error, bypass)."
    );
    describe_histogram!(
        cache::DURATION,
        Unit::Seconds,
        "Cache call latency, by operation."
    );
    describe_gauge!(db::POOL_ACTIVE, "Pool connections in use.");
    describe_gauge!(db::POOL_IDLE, "Pool connections open and idle.");
    describe_gauge!(db::POOL_MAX, "Pool ceiling (DB_MAX_CONNECTIONS).");
    describe_gauge!(db::POOL_MIN, "Pool floor (DB_MIN_CONNECTIONS).");
    describe_gauge!(
        db::REPLICA_LAG,
        Unit::Seconds,
        "How far the read replica is behind the primary (WAL positions, timed here)."
    );
    describe_counter!(
        db::REPLICA_FALLBACKS,
        "Reads sent to the primary instead of the replica, by reason (unavailable, lag, token, error)."
    );
    describe_counter!(
        http::REQUESTS,
        "HTTP requests served, by method, route template and status."
    );
    describe_gauge!(
        http::OPEN_CONNECTIONS,
        "Open client connections of the public listener."
    );
    describe_gauge!(
        http::MAX_CONNECTIONS,
        "Connection cap (HTTP_MAX_CONNECTIONS); more wait in the listen backlog."
    );
    describe_counter!(
        http::CONNECTIONS_CLOSED,
        "Client connections the service closed, by reason (header, idle or request timeout)."
    );
    describe_counter!(
        http::ACCEPT_ERRORS,
        "Accepts that failed for lack of file descriptors or memory (the listener backs off)."
    );
    describe_histogram!(
        http::DURATION,
        Unit::Seconds,
        "HTTP request latency, by method, route template and status."
    );
}
