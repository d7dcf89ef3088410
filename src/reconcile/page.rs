//! One page of a run: its Stripe customers matched to local rows in one query, each pair
//! diffed, reported and (Enforce) repaired; then the local customers the scan did not see.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::diff::{Action, ActionKind, diff};
use super::ledger::Ledger;
use super::plan::{PlanSink, Progress};
use super::repair::Repairer;
use super::scan::{PageSink, ScanError, Segment};
use crate::crd::Adoption;
use crate::domain::{Customer, CustomerId};
use crate::policy::Policy;
use crate::store::reconcile_runs::RunCounts;
use crate::store::{self, customers};
use crate::stripe::{RateLimit, StripeApi, StripeCustomer};
use crate::sync::mapping::PAYSYNC_ID_KEY;

/// A run's counts as it goes.
#[derive(Debug, Default, Clone)]
pub(super) struct Tally {
    pub counts: RunCounts,
    /// Drift by (kind, field): `paysync_drift`.
    pub by_field: BTreeMap<(String, String), i64>,
}

pub(super) struct PageWork {
    pub policy: Arc<Policy>,
    pub stripe: Arc<dyn StripeApi>,
    pub budget: RateLimit,
    pub ledger: Arc<Ledger>,
    pub tally: Mutex<Tally>,
    pub progress: Arc<Progress>,
    pub plan: Option<Arc<dyn PlanSink>>,
    /// `None` when the run only reports (dry run, Observe).
    pub repairer: Option<Repairer>,
}

impl PageWork {
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        match self.tally.lock() {
            Ok(tally) => tally,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The local customer each Stripe customer matches, in one query.
    async fn matches(&self, page: &[StripeCustomer]) -> store::Result<Vec<Option<Customer>>> {
        let listed: Vec<customers::Listed<'_>> = page
            .iter()
            .map(|c| customers::Listed {
                stripe_id: &c.id,
                paysync_id: c
                    .metadata
                    .get(PAYSYNC_ID_KEY)
                    .and_then(|id| id.parse::<CustomerId>().ok()),
                email: c.email.as_deref(),
            })
            .collect();
        let by_email = self.policy.spec.adoption != Adoption::None;
        let found = self
            .ledger
            .match_page(&self.policy.name, &listed, by_email)
            .await?;
        let mut matched: Vec<Option<Customer>> = vec![None; page.len()];
        for (position, customer) in found {
            if let Some(slot) = matched.get_mut(position) {
                *slot = Some(customer);
            }
        }
        Ok(matched)
    }

    /// Reports a pair's drift and, unless only reporting, repairs it.
    async fn settle(
        &self,
        local: Option<&Customer>,
        stripe: Option<&StripeCustomer>,
        actions: Vec<Action>,
        listed_at: DateTime<Utc>,
    ) {
        if actions.is_empty() {
            return;
        }
        self.count_drift(&actions);
        let stripe_id = stripe
            .map(|s| s.id.as_str())
            .or_else(|| local.and_then(|l| l.stripe_id.as_deref()));
        let repairs = actions
            .iter()
            .filter(|a| a.kind != ActionKind::Report)
            .count() as i64;
        let Some(repairer) = &self.repairer else {
            return;
        };
        if repairs == 0 {
            return;
        }
        let result = repairer
            .repair(local, stripe_id, stripe, &actions, listed_at)
            .await;
        let mut tally = self.tally();
        match result {
            Ok(()) => tally.counts.repaired += repairs,
            Err(error) => {
                tally.counts.failed += repairs;
                warn!(policy = %self.policy.name, customer_id = local.map(|l| tracing::field::display(l.id)), stripe_id, error, "reconcile could not repair a customer; the next run tries again");
            }
        }
    }

    fn count_drift(&self, actions: &[Action]) {
        let mut tally = self.tally();
        for action in actions {
            if let Some(plan) = &self.plan {
                plan.action(&self.policy.name, action);
            }
            info!(policy = %self.policy.name, action = action.kind.label(), drift = action.drift.label(), customer_id = action.customer_id.map(tracing::field::display), stripe_id = action.stripe_id.as_deref(), reason = %action.reason, "drift");
            tally.counts.drift += 1;
            let kind = action.drift.label().to_owned();
            *tally.counts.drift_by_kind.entry(kind.clone()).or_default() += 1;
            let fields: Vec<String> = if action.changes.is_empty() {
                vec![String::new()]
            } else {
                action.changes.iter().map(|c| c.field.clone()).collect()
            };
            for field in fields {
                *tally.by_field.entry((kind.clone(), field)).or_default() += 1;
            }
        }
    }

    /// Local customers the scan did not see: never created in Stripe, or gone from it (asked
    /// of Stripe one by one: they are few, and a missed page must not delete anything).
    pub async fn local_pass(&self, scan_from: DateTime<Utc>) -> Result<(), ScanError> {
        let mut after = None;
        loop {
            let page = self
                .ledger
                .unseen(&self.policy.name, scan_from, after, 100)
                .await
                .map_err(|e| ScanError::Sink(e.to_string()))?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            for local in &page {
                let listed_at = Utc::now();
                let stripe = match &local.stripe_id {
                    Some(stripe_id) => {
                        self.budget.acquire().await;
                        self.stripe.retrieve_customer(stripe_id).await?
                    }
                    None => None,
                };
                let actions = diff(Some(local), stripe.as_ref(), &self.policy.spec);
                self.settle(Some(local), stripe.as_ref(), actions, listed_at)
                    .await;
                // Done with it: a resumed run does not ask Stripe again.
                self.ledger
                    .mark_seen(&[local.id])
                    .await
                    .map_err(|e| ScanError::Sink(e.to_string()))?;
            }
        }
    }
}

#[async_trait]
impl PageSink for PageWork {
    async fn process(
        &self,
        page: Vec<StripeCustomer>,
        listed_at: DateTime<Utc>,
        checkpoint: Vec<Segment>,
    ) -> Result<(), ScanError> {
        let store_error = |e: store::Error| ScanError::Sink(e.to_string());
        let matched = self.matches(&page).await.map_err(store_error)?;
        for (stripe, local) in page.iter().zip(&matched) {
            let actions = diff(local.as_ref(), Some(stripe), &self.policy.spec);
            self.settle(local.as_ref(), Some(stripe), actions, listed_at)
                .await;
        }
        let counts = {
            let mut tally = self.tally();
            tally.counts.scanned += page.len() as i64;
            tally.counts.pages += 1;
            tally.counts.clone()
        };
        self.progress
            .scanned
            .fetch_add(page.len() as u64, Ordering::Relaxed);
        self.progress.pages.fetch_add(1, Ordering::Relaxed);
        self.ledger
            .checkpoint(&checkpoint, &counts)
            .await
            .map_err(store_error)
    }
}
