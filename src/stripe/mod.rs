//! Stripe behind one seam: the [`StripeApi`] trait, its HTTP implementation (async-stripe's
//! typed requests, paysync's transport with rate limiting, timeouts and retries), and the
//! tolerant types responses are parsed into.

mod call;
mod client;
pub mod event;
mod metrics;
mod rate_limit;
pub mod retry;
mod types;
pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;

pub use call::StripeSettings;
pub use client::HttpStripe;
pub use metrics::{StripeCallLabels, StripeMetrics};
pub use rate_limit::RateLimit;
pub use types::{CustomerPage, CustomerWrite, StripeCustomer, StripeList};

use crate::domain::CustomerId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Stripe refused the request for good (e.g. 400 invalid email); retrying cannot help.
    #[error("Stripe rejected {operation} with {status}: {message}")]
    Rejected {
        operation: &'static str,
        status: u16,
        message: String,
    },
    /// Every attempt failed with an error that could have passed (rate limit, 5xx, network).
    #[error("{operation} failed after {attempts} attempts; last error: {last}")]
    Exhausted {
        operation: &'static str,
        attempts: u32,
        last: String,
    },
    /// One attempt (a single-attempt call) failed in a way a later one may not: rate limited,
    /// Stripe-side failure, network. `fate` says what became of the request.
    #[error("{operation} failed: {cause}")]
    Failed {
        operation: &'static str,
        cause: String,
        /// The metric label of the failure (`rate_limited`, `server_error`, ...).
        reason: &'static str,
        retry_after: Option<Duration>,
        fate: Fate,
    },
    #[error("Stripe answered {operation} with a body paysync cannot read: {source}")]
    Unreadable {
        operation: &'static str,
        #[source]
        source: std::sync::Arc<serde_json::Error>,
    },
}

/// What became of a request whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Stripe did not apply it (429, 409, or it never left: a refused connection).
    NotApplied,
    /// Stripe answered (a 5xx): it may have applied it, but is done with it.
    Answered,
    /// No answer (a timeout, a reset): it may have been applied, or may still be, later.
    MayStillLand,
}

impl Error {
    /// Whether a later attempt of the same change may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Exhausted { .. } | Self::Failed { .. })
    }

    /// Stripe refused the API key itself (401, or 403 for a restricted key without the
    /// permission): no change of this account can succeed until the key changes.
    pub fn is_key_rejected(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                status: 401 | 403,
                ..
            }
        )
    }
}

/// The Stripe operations paysync needs, for one Stripe account.
#[async_trait]
pub trait StripeApi: Send + Sync {
    /// The Stripe customer paysync created for `paysync_id` (email plus
    /// `metadata.paysync_id` match), if any: the guard against creating it twice. One attempt
    /// per page, as the writes (the outbound writer retries).
    async fn find_customer(
        &self,
        email: &str,
        paysync_id: CustomerId,
    ) -> Result<Option<StripeCustomer>>;

    /// Creates a customer, in one attempt: a transient failure is [`Error::Failed`], for
    /// the caller to resolve (it must look the customer up before another create).
    async fn create_customer(
        &self,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer>;

    /// Makes the customer's fields and metadata equal to `write` (keys not in it are removed);
    /// one attempt per call it makes ([`Error::Failed`] for the caller to retry).
    async fn update_customer(
        &self,
        stripe_id: &str,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer>;

    /// Deletes a customer, in one attempt; one that is already gone counts as deleted.
    async fn delete_customer(&self, stripe_id: &str, idempotency_key: &str) -> Result<()>;

    /// The customer as Stripe holds it now; `None` once deleted (Stripe answers with
    /// `deleted: true`, localstripe with 404).
    async fn retrieve_customer(&self, stripe_id: &str) -> Result<Option<StripeCustomer>>;

    /// Checks that Stripe accepts the API key (a cheap read); `Rejected` with 401 or 403 when
    /// it does not.
    async fn check_key(&self) -> Result<()>;

    /// One page (up to 100) of the account's customers, newest first. `Rejected` with 400
    /// when the server cannot filter by `created` (localstripe): the reconciler then scans
    /// with one cursor.
    async fn list_customers(&self, page: &CustomerPage) -> Result<StripeList<StripeCustomer>>;

    /// One page of events of type `kind` created at or after `created_gte` (Unix seconds),
    /// after the event `starting_after`, as raw JSON (exactly what a webhook would carry).
    /// Stripe pages newest first, localstripe oldest first: callers must not rely on either.
    async fn list_events(
        &self,
        kind: &str,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<StripeList<serde_json::Value>>;

    /// Counts a retry a caller makes of a failed single attempt
    /// (`paysync_stripe_retries_total`).
    fn count_retry(&self, _operation: &'static str, _reason: &'static str) {}
}
