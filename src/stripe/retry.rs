//! When to retry a Stripe call: pure functions, tested without I/O (how long to wait is
//! [`crate::backoff::Backoff`]).

use std::time::Duration;

/// What a failed attempt means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Worth trying again (rate limited, Stripe-side failure, lock conflict, network).
    Retry,
    /// Retrying cannot help (invalid request, auth, not found): stop and report.
    Permanent,
}

/// Classifies an HTTP answer from Stripe. `should_retry` is Stripe's `Stripe-Should-Retry`
/// header, which overrides the status when present.
pub fn classify_status(status: u16, should_retry: Option<bool>) -> Disposition {
    match should_retry {
        Some(true) => return Disposition::Retry,
        Some(false) => return Disposition::Permanent,
        None => {}
    }
    match status {
        // 409: idempotency or lock conflict; 429: rate limited; 5xx: Stripe's side.
        409 | 429 | 500..=599 => Disposition::Retry,
        _ => Disposition::Permanent,
    }
}

/// Parses `Retry-After` as delta-seconds (what Stripe and proxies send); HTTP dates are rare
/// here and are ignored in favour of the backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_what_can_succeed_later_and_nothing_else() {
        for status in [409, 429, 500, 502, 503, 504] {
            assert_eq!(
                classify_status(status, None),
                Disposition::Retry,
                "{status}"
            );
        }
        for status in [400, 401, 402, 403, 404] {
            assert_eq!(
                classify_status(status, None),
                Disposition::Permanent,
                "{status}"
            );
        }
        assert_eq!(classify_status(400, Some(true)), Disposition::Retry);
        assert_eq!(classify_status(503, Some(false)), Disposition::Permanent);
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
