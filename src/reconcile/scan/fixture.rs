//! An in-memory Stripe account with Stripe's list semantics (newest first, then by id;
//! `limit` 100, `starting_after`, `created` ranges, `has_more`), for the scan's property tests.
//! localstripe cannot serve these (it does not filter by `created` and lists oldest first).
//! It can delete and create customers while a scan runs, and add latency to every call.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Lister, PAGE_SIZE};
use crate::stripe::{self as stripe_api, CustomerPage, StripeCustomer, StripeList};

/// A customer: `(created, id)`, ordered as Stripe lists them (reversed).
pub type Key = (i64, String);

pub struct Account {
    state: Mutex<State>,
    latency: Duration,
}

struct State {
    live: BTreeSet<Key>,
    rng: StdRng,
    /// Per call, the chance of deleting one customer and of creating one.
    churn: f64,
    /// `created` of customers made during the scan.
    new_created: i64,
    next: u64,
}

impl Account {
    pub fn new(customers: impl IntoIterator<Item = Key>, seed: u64) -> Self {
        Self {
            state: Mutex::new(State {
                live: customers.into_iter().collect(),
                rng: StdRng::seed_from_u64(seed),
                churn: 0.0,
                new_created: 0,
                next: 0,
            }),
            latency: Duration::ZERO,
        }
    }

    /// Deletes and creates customers (created at `new_created`) while the scan runs.
    pub fn with_churn(self, churn: f64, new_created: i64) -> Self {
        if let Ok(mut state) = self.state.lock() {
            state.churn = churn;
            state.new_created = new_created;
        }
        self
    }

    pub fn live(&self) -> BTreeSet<Key> {
        self.state
            .lock()
            .map(|s| s.live.clone())
            .unwrap_or_default()
    }

    fn page(&self, request: &CustomerPage) -> stripe_api::Result<StripeList<StripeCustomer>> {
        let mut state = self.state.lock().map_err(|_| rejected(500, "poisoned"))?;
        state.churn_once();
        let in_range = |(created, _): &&Key| {
            request.created_gte.is_none_or(|gte| *created >= gte)
                && request.created_lt.is_none_or(|lt| *created < lt)
        };
        let below: Box<dyn Iterator<Item = &Key>> = match &request.starting_after {
            None => Box::new(state.live.iter().rev()),
            Some(after) => {
                let Some(cursor) = state.live.iter().find(|(_, id)| id == after).cloned() else {
                    return Err(rejected(404, "No such customer"));
                };
                Box::new(state.live.range(..cursor).rev())
            }
        };
        let mut data: Vec<StripeCustomer> = below
            .filter(in_range)
            .take(PAGE_SIZE + 1)
            .map(|(created, id)| customer(id, *created))
            .collect();
        let has_more = data.len() > PAGE_SIZE;
        data.truncate(PAGE_SIZE);
        Ok(StripeList { data, has_more })
    }
}

impl State {
    fn churn_once(&mut self) {
        if self.churn <= 0.0 {
            return;
        }
        if self.rng.random_bool(self.churn) && !self.live.is_empty() {
            let nth = self.rng.random_range(0..self.live.len());
            if let Some(gone) = self.live.iter().nth(nth).cloned() {
                self.live.remove(&gone);
            }
        }
        if self.rng.random_bool(self.churn) {
            self.next += 1;
            let key = (self.new_created, format!("cus_new{:08}", self.next));
            self.live.insert(key);
        }
    }
}

fn rejected(status: u16, message: &str) -> stripe_api::Error {
    stripe_api::Error::Rejected {
        operation: "list_customers",
        status,
        message: message.to_owned(),
    }
}

pub fn customer(id: &str, created: i64) -> StripeCustomer {
    StripeCustomer {
        id: id.to_owned(),
        email: Some(format!("{id}@example.com")),
        name: None,
        phone: None,
        description: None,
        metadata: Default::default(),
        deleted: false,
        created,
    }
}

#[async_trait]
impl Lister for Account {
    async fn list(&self, page: &CustomerPage) -> stripe_api::Result<StripeList<StripeCustomer>> {
        if self.latency.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(self.latency).await;
        }
        self.page(page)
    }
}
