//! The one retry backoff: exponential with full jitter, capped, with a server's `Retry-After`
//! as a floor. Every retry loop in paysync (Stripe calls, events applied alone, Kafka
//! consumers waiting for the database) waits with it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `attempt + 1`, where `attempt` (1-based) just failed.
    /// `unit_random` is uniform in `[0, 1)`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit_random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.max);
        let jittered = ceiling.mul_f64(unit_random.clamp(0.0, 1.0));
        match retry_after {
            Some(floor) => floor.min(self.max).max(jittered),
            None => jittered,
        }
    }

    /// [`Self::delay`] with fresh randomness.
    pub fn jittered(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(attempt, retry_after, rand::rng().random::<f64>())
    }

    /// Runs `operation` until it succeeds, waiting between failures (each logged at warn with
    /// `what`); `None` when `shutdown` is cancelled first. For work that must not be skipped
    /// and can only wait for a dependency to come back (the database, a broker).
    pub async fn until_ok<T, E, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut operation: F,
    ) -> Option<T>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match operation().await {
                Ok(value) => return Some(value),
                Err(e) => {
                    let delay = self.jittered(attempt, None);
                    warn!(attempt, error = %e, delay_ms = delay.as_millis() as u64, "{what} failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// How a worker waits for a dependency to come back: from a fifth of a second up to half a
/// minute.
pub const DEPENDENCY_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(200),
    max: Duration::from_secs(30),
};

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(backoff.delay(1, None, 0.999_999).as_millis(), 99);
        assert_eq!(backoff.delay(3, None, 0.999_999).as_millis(), 399);
        assert_eq!(backoff.delay(30, None, 1.0), Duration::from_secs(5));
        assert_eq!(backoff.delay(4, None, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_a_floor_within_the_cap() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(2)), 0.5),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(60)), 0.5),
            Duration::from_secs(5)
        );
    }

    #[tokio::test]
    async fn until_ok_retries_until_success_or_shutdown() {
        let backoff = Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let shutdown = CancellationToken::new();
        let value = backoff
            .until_ok("test", &shutdown, || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("not yet"),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(value, Some(3));
        shutdown.cancel();
        let never: Option<()> = backoff
            .until_ok("test", &shutdown, || async { Err::<(), _>("down") })
            .await;
        assert_eq!(never, None);
    }
}
