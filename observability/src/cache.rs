//! Cache metrics: every call to the cache, its result and its latency.

use std::time::Duration;

pub const REQUESTS: &str = "cache_requests_total";
pub const DURATION: &str = "cache_operation_duration_seconds";

/// How a cache call ended, as counted in `cache_requests_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// A read answered from the cache.
    Hit,
    /// A read the cache could not answer: the database did.
    Miss,
    /// A store or tombstone the cache took (or refused as older than what it holds).
    Ok,
    /// The call failed or took longer than `CACHE_TIMEOUT_MS`: the database answered.
    Error,
    /// Not tried: the cache is recovering from an error, the database answered.
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Ok,
        CacheResult::Error,
        CacheResult::Bypass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Ok => "ok",
            CacheResult::Error => "error",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// Counts one cache call; `elapsed` is `None` when no call was made (a bypass).
pub fn record(operation: &'static str, result: CacheResult, elapsed: Option<Duration>) {
    metrics::counter!(REQUESTS, "operation" => operation, "result" => result.as_str()).increment(1);
    if let Some(elapsed) = elapsed {
        metrics::histogram!(DURATION, "operation" => operation).record(elapsed.as_secs_f64());
    }
}

/// Registers every (operation, result) counter at 0, so hit ratios and error alerts read 0
/// rather than "no data" before the first call.
pub fn register_operations(operations: &[&'static str]) {
    for &operation in operations {
        for result in CacheResult::ALL {
            metrics::counter!(REQUESTS, "operation" => operation, "result" => result.as_str())
                .absolute(0);
        }
    }
}
