//! Database query and pool metrics.

use std::time::Duration;

pub const QUERY_DURATION: &str = "database_query_duration_seconds";
pub const ERRORS: &str = "database_errors_total";
pub const POOL_ACTIVE: &str = "database_pool_connections_active";
pub const POOL_IDLE: &str = "database_pool_connections_idle";
pub const POOL_MAX: &str = "database_pool_connections_max";
pub const POOL_MIN: &str = "database_pool_connections_min";

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

/// Records one database operation: its duration, and its error kind when it failed.
pub fn record_query(operation: &'static str, elapsed: Duration, error: Option<ErrorKind>) {
    let outcome = if error.is_some() { "error" } else { "ok" };
    metrics::histogram!(QUERY_DURATION, "operation" => operation, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
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

pub fn record_pool(state: PoolState) {
    metrics::gauge!(POOL_ACTIVE).set(state.active);
    metrics::gauge!(POOL_IDLE).set(state.idle);
    metrics::gauge!(POOL_MAX).set(state.max);
    metrics::gauge!(POOL_MIN).set(state.min);
}
