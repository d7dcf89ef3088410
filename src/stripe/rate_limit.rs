//! The token bucket that keeps paysync inside a policy's Stripe request budget.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A shared token bucket: `rate` requests per second on average, bursts up to `burst`.
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimit {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Self {
        Self {
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(burst),
            )),
        }
    }

    /// Waits for a token; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        self.limiter.until_ready().await;
        started.elapsed()
    }
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}
