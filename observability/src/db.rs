//! Database query and pool metrics.

use std::time::Duration;

pub const QUERY_DURATION: &str = "database_query_duration_seconds";
pub const ERRORS: &str = "database_errors_total";
pub const POOL_ACTIVE: &str = "database_pool_connections_active";
pub const POOL_IDLE: &str = "database_pool_connections_idle";
pub const POOL_MAX: &str = "database_pool_connections_max";
pub const POOL_MIN: &str = "database_pool_connections_min";
pub const REPLICA_LAG: &str = "database_replica_lag_seconds";
/// The lag past which reads leave the replica (`DB_READ_MAX_LAG_MS`): the alert's threshold,
/// read from the service rather than written again in the rule.
pub const REPLICA_MAX_LAG: &str = "database_replica_max_lag_seconds";
pub const REPLICA_FALLBACKS: &str = "database_replica_fallbacks_total";

/// Which database answered, as the `pool` label says it (only with a replica configured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Primary,
    Replica,
}

impl Pool {
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Primary => "primary",
            Pool::Replica => "replica",
        }
    }
}

/// Why a read that could have gone to the replica went to the primary, as counted in
/// `database_replica_fallbacks_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The replica did not answer its last check, or is not replaying.
    Unavailable,
    /// Further behind than `DB_READ_MAX_LAG_MS`.
    Lag,
    /// It has not replayed the write whose `Consistency-Token` the read carries.
    Token,
    /// The read failed on the replica, or got no answer in time, and the primary answered it.
    Error,
}

impl Fallback {
    pub const ALL: [Fallback; 4] = [
        Fallback::Unavailable,
        Fallback::Lag,
        Fallback::Token,
        Fallback::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Unavailable => "unavailable",
            Fallback::Lag => "lag",
            Fallback::Token => "token",
            Fallback::Error => "error",
        }
    }
}

/// What went wrong with a database call, as counted in `database_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    UniqueViolation,
    NotFound,
    PoolTimeout,
    Connection,
    Timeout,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::UniqueViolation,
        ErrorKind::NotFound,
        ErrorKind::PoolTimeout,
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UniqueViolation => "unique_violation",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }
}

/// Records one database operation: its duration (by pool, with a replica configured), and
/// its error kind when it failed.
pub fn record_query(
    operation: &'static str,
    pool: Option<Pool>,
    elapsed: Duration,
    error: Option<ErrorKind>,
) {
    let outcome = if error.is_some() { "error" } else { "ok" };
    let histogram = match pool {
        Some(pool) => {
            metrics::histogram!(QUERY_DURATION, "operation" => operation, "outcome" => outcome, "pool" => pool.as_str())
        }
        None => metrics::histogram!(QUERY_DURATION, "operation" => operation, "outcome" => outcome),
    };
    histogram.record(elapsed.as_secs_f64());
    if let Some(kind) = error {
        record_error(operation, kind);
    }
}

/// Counts an error that is not a failed call, such as a lookup that found nothing.
pub fn record_error(operation: &'static str, kind: ErrorKind) {
    metrics::counter!(ERRORS, "operation" => operation, "kind" => kind.as_str()).increment(1);
}

/// Registers every (operation, kind) error counter at 0, so dashboards and alerts read 0
/// rather than "no data" before the first error.
pub fn register_operations(operations: &[&'static str]) {
    for &operation in operations {
        for kind in ErrorKind::ALL {
            metrics::counter!(ERRORS, "operation" => operation, "kind" => kind.as_str())
                .absolute(0);
        }
    }
}

/// A snapshot of the connection pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolState {
    pub active: u32,
    pub idle: u32,
    pub max: u32,
    pub min: u32,
}

/// Sets the pool gauges; with a replica configured, one set per pool.
pub fn record_pool(pool: Option<Pool>, state: PoolState) {
    let gauges = [
        (POOL_ACTIVE, state.active),
        (POOL_IDLE, state.idle),
        (POOL_MAX, state.max),
        (POOL_MIN, state.min),
    ];
    for (name, value) in gauges {
        match pool {
            Some(pool) => metrics::gauge!(name, "pool" => pool.as_str()).set(value),
            None => metrics::gauge!(name).set(value),
        }
    }
}

pub fn record_replica_lag(lag: Duration) {
    metrics::gauge!(REPLICA_LAG).set(lag.as_secs_f64());
}

pub fn record_fallback(reason: Fallback) {
    metrics::counter!(REPLICA_FALLBACKS, "reason" => reason.as_str()).increment(1);
}

/// Registers the replica's series at 0, so its dashboards and alerts read 0 before the first
/// fallback, and its configured lag limit.
pub fn register_replica(max_lag: Duration) {
    for reason in Fallback::ALL {
        metrics::counter!(REPLICA_FALLBACKS, "reason" => reason.as_str()).absolute(0);
    }
    record_replica_lag(Duration::ZERO);
    metrics::gauge!(REPLICA_MAX_LAG).set(max_lag.as_secs_f64());
}
