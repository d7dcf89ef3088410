//! [`StripeApi`] over HTTP: each operation builds its async-stripe request and sends it
//! through [`Caller`] (rate budget, timeouts, retries).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use stripe_client_core::StripeRequest as _;
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, ListCustomer, RetrieveCustomer, UpdateCustomer,
};
use stripe_core::event::ListEvent;
use tracing::debug;

use super::call::{Caller, Repeat, StripeSettings};
use super::metrics::StripeMetrics;
use super::types::StripeList;
use super::{CustomerPage, CustomerWrite, Error, RateLimit, Result, StripeApi, StripeCustomer};
use crate::domain::CustomerId;

/// Stripe's maximum page size: fewest calls per customer lookup and per catch-up.
const LIST_PAGE_SIZE: i64 = 100;

/// The Stripe API of one account.
pub struct HttpStripe {
    caller: Caller,
}

impl HttpStripe {
    pub fn new(
        settings: StripeSettings,
        limit: RateLimit,
        metrics: Arc<StripeMetrics>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            caller: Caller::new(settings, limit, metrics)?,
        })
    }
}

/// Stripe removes a metadata key when it is set to an empty string.
fn metadata_with_removals(
    write: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> HashMap<String, String> {
    let mut metadata: HashMap<String, String> = write.clone().into_iter().collect();
    for key in current.keys() {
        metadata.entry(key.clone()).or_default();
    }
    metadata
}

#[async_trait]
impl StripeApi for HttpStripe {
    async fn find_customer(
        &self,
        email: &str,
        paysync_id: CustomerId,
    ) -> Result<Option<StripeCustomer>> {
        let wanted = paysync_id.to_string();
        let mut starting_after: Option<String> = None;
        loop {
            let mut list = ListCustomer::new().email(email).limit(LIST_PAGE_SIZE);
            if let Some(after) = &starting_after {
                list = list.starting_after(after.clone());
            }
            let page: StripeList<StripeCustomer> = self
                .caller
                .send("list_customers", list.build(), None, Repeat::Once)
                .await?;
            if let Some(found) = page
                .data
                .iter()
                .find(|c| c.metadata.get("paysync_id") == Some(&wanted))
            {
                return Ok(Some(found.clone()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => starting_after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }

    async fn create_customer(
        &self,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer> {
        let mut create = CreateCustomer::new().email(write.email.clone()).metadata(
            write
                .metadata
                .clone()
                .into_iter()
                .collect::<HashMap<_, _>>(),
        );
        if let Some(name) = &write.name {
            create = create.name(name.clone());
        }
        if let Some(phone) = &write.phone {
            create = create.phone(phone.clone());
        }
        if let Some(description) = &write.description {
            create = create.description(description.clone());
        }
        self.caller
            .send(
                "create_customer",
                create.build(),
                Some(idempotency_key),
                Repeat::Once,
            )
            .await
    }

    async fn update_customer(
        &self,
        stripe_id: &str,
        write: &CustomerWrite,
        idempotency_key: &str,
    ) -> Result<StripeCustomer> {
        let update = |metadata: HashMap<String, String>| {
            UpdateCustomer::new(stripe_id)
                .email(write.email.clone())
                .name(write.name.clone().unwrap_or_default())
                .phone(write.phone.clone().unwrap_or_default())
                .description(write.description.clone().unwrap_or_default())
                .metadata(metadata)
                .build()
        };
        let updated: StripeCustomer = self
            .caller
            .send(
                "update_customer",
                update(metadata_with_removals(&write.metadata, &BTreeMap::new())),
                Some(idempotency_key),
                Repeat::Once,
            )
            .await?;
        // Stripe merges metadata: keys set elsewhere survive an update. Remove them so Stripe
        // holds exactly what paysync wrote (costs a second call only when there are any).
        // A blank value is a removed key (localstripe keeps it blank instead of dropping it).
        let extra = |(key, value): (&String, &String)| {
            !value.is_empty() && !write.metadata.contains_key(key)
        };
        if updated.metadata.iter().any(extra) {
            debug!(stripe_id, "removing metadata keys paysync does not have");
            return self
                .caller
                .send(
                    "update_customer",
                    update(metadata_with_removals(&write.metadata, &updated.metadata)),
                    Some(&format!("{idempotency_key}:metadata")),
                    Repeat::Once,
                )
                .await;
        }
        Ok(updated)
    }

    async fn delete_customer(&self, stripe_id: &str, idempotency_key: &str) -> Result<()> {
        let deleted: Result<serde_json::Value> = self
            .caller
            .send(
                "delete_customer",
                DeleteCustomer::new(stripe_id).build(),
                Some(idempotency_key),
                Repeat::Once,
            )
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(Error::Rejected { status: 404, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn retrieve_customer(&self, stripe_id: &str) -> Result<Option<StripeCustomer>> {
        let found: Result<StripeCustomer> = self
            .caller
            .send(
                "retrieve_customer",
                RetrieveCustomer::new(stripe_id).build(),
                None,
                Repeat::AnyTransient,
            )
            .await;
        match found {
            Ok(customer) if customer.deleted => Ok(None),
            Ok(customer) => Ok(Some(customer)),
            Err(Error::Rejected { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn check_key(&self) -> Result<()> {
        let _: StripeList<StripeCustomer> = self
            .caller
            .send(
                "check_key",
                ListCustomer::new().limit(1).build(),
                None,
                Repeat::AnyTransient,
            )
            .await?;
        Ok(())
    }

    async fn list_customers(&self, page: &CustomerPage) -> Result<StripeList<StripeCustomer>> {
        let mut list = ListCustomer::new().limit(LIST_PAGE_SIZE);
        if page.created_gte.is_some() || page.created_lt.is_some() {
            list = list.created(stripe_types::RangeQueryTs::Bounds(
                stripe_types::RangeBoundsTs {
                    gte: page.created_gte,
                    lt: page.created_lt,
                    ..Default::default()
                },
            ));
        }
        if let Some(after) = &page.starting_after {
            list = list.starting_after(after.clone());
        }
        self.caller
            .send("list_customers", list.build(), None, Repeat::AnyTransient)
            .await
    }

    async fn list_events(
        &self,
        kind: &str,
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<StripeList<serde_json::Value>> {
        let mut list = ListEvent::new()
            .type_(kind)
            .created(stripe_types::RangeQueryTs::gte(created_gte))
            .limit(LIST_PAGE_SIZE);
        if let Some(after) = starting_after {
            list = list.starting_after(after);
        }
        self.caller
            .send("list_events", list.build(), None, Repeat::AnyTransient)
            .await
    }

    fn count_retry(&self, operation: &'static str, reason: &'static str) {
        self.caller.count_retry(operation, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_blank_every_key_paysync_does_not_have() {
        let write = BTreeMap::from([("plan".to_owned(), "pro".to_owned())]);
        let current = BTreeMap::from([
            ("plan".to_owned(), "free".to_owned()),
            ("legacy".to_owned(), "1".to_owned()),
        ]);
        let metadata = metadata_with_removals(&write, &current);
        assert_eq!(metadata["plan"], "pro");
        assert_eq!(metadata["legacy"], "");
        assert_eq!(metadata.len(), 2);
    }
}
