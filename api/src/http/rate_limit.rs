//! The per-client request rate (`RATE_LIMIT_PER_SECOND`): built, kept and pruned here.

use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::{ApiError, ErrorCode};

/// How often keys that have not been seen for a while are forgotten, so one-off clients do
/// not pile up.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A token bucket per key (a token's digest or a client address). Per instance: behind a load
/// balancer, each instance grants the full rate.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl RateLimit {
    /// Builds the limiter and starts pruning it for as long as it lives. Needs the Tokio
    /// runtime.
    pub fn new(per_second: NonZeroU32) -> Self {
        let limiter = Arc::new(DefaultKeyedRateLimiter::keyed(Quota::per_second(
            per_second,
        )));
        tokio::spawn(prune(Arc::downgrade(&limiter)));
        Self { limiter }
    }

    /// Takes one request from `key`'s budget, or says when to come back.
    pub fn check(&self, key: String) -> Result<(), ApiError> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::retry_after(ErrorCode::RateLimited, wait.max(Duration::from_secs(1)))
        })
    }
}

async fn prune(limiter: Weak<DefaultKeyedRateLimiter<String>>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
}
