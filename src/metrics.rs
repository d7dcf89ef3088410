//! Prometheus metrics: one registry, the metric families, and their text encoding.

use std::fmt;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of an HTTP request. `route` is the matched route template (`/v1/customers/{id}`),
/// never the raw path, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Labels of a Stripe API call: the operation and how the attempt ended
/// (`ok`, `rejected`, `rate_limited`, `server_error`, `connection_error`, `timeout_or_reset`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StripeCallLabels {
    pub operation: String,
    pub result: String,
}

impl StripeCallLabels {
    pub fn new(operation: &str, result: &str) -> Self {
        Self {
            operation: operation.to_owned(),
            result: result.to_owned(),
        }
    }
}

/// Labels naming one side of the sync (`outbound` or `inbound`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// Labels naming what the outbound worker did to Stripe (`create`, `link`, `update`,
/// `delete`, `noop`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// 5 ms to ~45 min: from a webhook applied at once to an event found by catch-up after an
/// outage.
fn lag_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 20))
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s: from a cached health check to a request stuck behind a slow database.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: Family<HttpLabels, Histogram>,
    pub stripe_requests: Family<StripeCallLabels, Counter>,
    pub stripe_retries: Family<StripeCallLabels, Counter>,
    pub stripe_rate_limit_wait: Histogram,
    pub outbound_lag: Histogram,
    pub outbound_synced: Family<OutcomeLabels, Counter>,
    pub dead_letters: Family<SourceLabels, Counter>,
    pub set_aside: Family<SourceLabels, Counter>,
    pub outbox_backlog: Gauge,
    pub webhooks: Family<OutcomeLabels, Counter>,
    pub inbound_events: Family<OutcomeLabels, Counter>,
    pub inbound_lag: Histogram,
    pub inbox_backlog: Gauge,
    pub outbound_oldest_pending: Gauge<f64, AtomicU64>,
    pub inbound_oldest_pending: Gauge<f64, AtomicU64>,
    pub dead_letters_open: Gauge,
    pub catch_up_events: Counter,
    pub catch_up_runs: Family<OutcomeLabels, Counter>,
    pub inbox_write_events: Histogram,
    pub inbox_write_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("paysync");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests handled, by method, route and status",
            http_requests.clone(),
        );
        let http_request_duration =
            Family::<HttpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by method, route and status",
            http_request_duration.clone(),
        );
        let stripe_requests = Family::<StripeCallLabels, Counter>::default();
        registry.register(
            "stripe_requests",
            "Stripe API attempts, by operation and result",
            stripe_requests.clone(),
        );
        let stripe_retries = Family::<StripeCallLabels, Counter>::default();
        registry.register(
            "stripe_retries",
            "Stripe API attempts retried after a transient failure, by operation and failure",
            stripe_retries.clone(),
        );
        let stripe_rate_limit_wait = latency_histogram();
        registry.register(
            "stripe_rate_limit_wait_seconds",
            "Time Stripe calls waited for the policy's rate budget",
            stripe_rate_limit_wait.clone(),
        );
        let outbound_lag = latency_histogram();
        registry.register(
            "outbound_lag_seconds",
            "From a local change being committed to Stripe having applied it",
            outbound_lag.clone(),
        );
        let outbound_synced = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "outbound_synced",
            "Outbound messages handled, by what was done to Stripe",
            outbound_synced.clone(),
        );
        let dead_letters = Family::<SourceLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Messages moved to the dead-letter table, by source",
            dead_letters.clone(),
        );
        let set_aside = Family::<SourceLabels, Counter>::default();
        registry.register(
            "set_aside",
            "Messages set aside without a dead letter because the database refused even that, \
             by source (an error is logged for each; should stay 0)",
            set_aside.clone(),
        );
        let outbox_backlog = Gauge::default();
        registry.register(
            "outbox_backlog",
            "Outbox rows not yet published (Kafka) or not yet synced (PostgreSQL transport)",
            outbox_backlog.clone(),
        );
        let webhooks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Stripe webhook deliveries, by outcome (accepted, bad_signature, stale, oversized, \
             malformed, ignored_type, unavailable)",
            webhooks.clone(),
        );
        let inbound_events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "inbound_events",
            "Stripe events handled by the inbound worker, by outcome (applied, adopted, deleted, \
             kept_local, duplicate, stale, superseded, echo, no_change, already_deleted, \
             not_linked, no_email, dead_lettered)",
            inbound_events.clone(),
        );
        let inbound_lag = lag_histogram();
        registry.register(
            "inbound_lag_seconds",
            "From a Stripe event being created to paysync having handled it",
            inbound_lag.clone(),
        );
        let inbox_backlog = Gauge::default();
        registry.register(
            "inbox_backlog",
            "Stripe events waiting in the PostgreSQL inbox",
            inbox_backlog.clone(),
        );
        let outbound_oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "outbound_oldest_pending_seconds",
            "Age of the oldest local change not yet in Stripe (0: none waits); grows while \
             outbound sync is stuck",
            outbound_oldest_pending.clone(),
        );
        let inbound_oldest_pending = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "inbound_oldest_pending_seconds",
            "Age of the oldest queued Stripe event not yet applied (0: none waits); grows \
             while inbound sync is stuck",
            inbound_oldest_pending.clone(),
        );
        let dead_letters_open = Gauge::default();
        registry.register(
            "dead_letters_open",
            "Dead letters not yet replayed",
            dead_letters_open.clone(),
        );
        let catch_up_events = Counter::default();
        registry.register(
            "catch_up_events",
            "Stripe events found by catch-up (Events API) that paysync had not received",
            catch_up_events.clone(),
        );
        let catch_up_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "catch_up_runs",
            "Catch-up runs, by outcome (done, skipped: another replica ran it, failed)",
            catch_up_runs.clone(),
        );
        let inbox_write_events = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "inbox_write_events",
            "Events per inbox write: concurrent webhook deliveries share one insert and commit",
            inbox_write_events.clone(),
        );
        let inbox_write_duration = latency_histogram();
        registry.register(
            "inbox_write_duration_seconds",
            "Time one inbox write took, insert and commit",
            inbox_write_duration.clone(),
        );
        Self {
            registry,
            http_requests,
            http_request_duration,
            stripe_requests,
            stripe_retries,
            stripe_rate_limit_wait,
            outbound_lag,
            outbound_synced,
            dead_letters,
            set_aside,
            outbox_backlog,
            webhooks,
            inbound_events,
            inbound_lag,
            inbox_backlog,
            outbound_oldest_pending,
            inbound_oldest_pending,
            dead_letters_open,
            catch_up_events,
            catch_up_runs,
            inbox_write_events,
            inbox_write_duration,
        }
    }

    /// Counts one outcome of a family labelled by outcome.
    pub fn count(family: &Family<OutcomeLabels, Counter>, outcome: &str) {
        family
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a message moved to the dead-letter table (`outbound` or `inbound`).
    pub fn dead_lettered(&self, source: &str) {
        self.dead_letters
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }

    /// Counts a message set aside without a dead letter.
    pub fn set_aside(&self, source: &str) {
        self.set_aside
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc();
    }

    /// The registry in OpenMetrics text format.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_request_counts_and_latency_by_route() {
        let metrics = Metrics::new();
        let labels = HttpLabels {
            method: "GET".into(),
            route: "/v1/customers/{id}".into(),
            status: 200,
        };
        metrics.http_requests.get_or_create(&labels).inc();
        metrics
            .http_request_duration
            .get_or_create(&labels)
            .observe(0.003);
        let text = metrics.encode().unwrap();
        assert!(text.contains(
            r#"paysync_http_requests_total{method="GET",route="/v1/customers/{id}",status="200"} 1"#
        ));
        assert!(text.contains("paysync_http_request_duration_seconds_count"));
        assert!(text.ends_with("# EOF\n"));
    }
}
