//! The one inbound entry point a transport hands Stripe events to: events of the billing
//! mirror's kinds go to [`MirrorSync`], every other event to paysync's two-way customers
//! ([`InboundSync`]), and a customer event to both (the mirror's `customers` row first, in a
//! transaction of its own: it is idempotent, so writing it again on a redelivery changes
//! nothing).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgPool;

use super::dead_letters::DeadLetters;
use super::inbound::{Delivery, InboundHandler, InboundSync, Received};
use super::mirror::{self, MirrorSync};
use crate::store;
use crate::store::processed_events;

pub struct InboundPipeline {
    pool: PgPool,
    customers: Arc<InboundSync>,
    mirror: Arc<MirrorSync>,
}

/// A batch split by who applies it.
struct Split {
    /// Events of the mirror's kinds other than customers: the mirror keeps their dedup records.
    mirrored: Vec<Received>,
    /// Every other event: paysync's customers keep their dedup records.
    customers: Vec<Received>,
    /// The customer events among them, whose mirror row the mirror writes too.
    customer_rows: Vec<Received>,
}

impl Split {
    fn of(events: &[Received]) -> Self {
        let mut split = Self {
            mirrored: Vec::new(),
            customers: Vec::new(),
            customer_rows: Vec::new(),
        };
        for received in events {
            match mirror::kind_of(received) {
                Some((kind, _)) if kind.table == "customers" => {
                    split.customer_rows.push(received.clone());
                    split.customers.push(received.clone());
                }
                Some(_) => split.mirrored.push(received.clone()),
                None => split.customers.push(received.clone()),
            }
        }
        split
    }
}

impl InboundPipeline {
    pub fn new(pool: PgPool, customers: Arc<InboundSync>, mirror: Arc<MirrorSync>) -> Self {
        Self {
            pool,
            customers,
            mirror,
        }
    }

    /// The mirror's events claimed in `tx`: applied and committed, or each alone.
    async fn mirror_claimed(
        &self,
        mut tx: store::Transaction,
        mirrored: &[Received],
    ) -> store::Result<()> {
        match self.mirror.apply_claimed(&mut tx, mirrored, &[]).await {
            Ok(outcomes) => {
                store::commit(tx).await?;
                self.mirror.record(mirrored, &outcomes);
                Ok(())
            }
            Err(_) => {
                store::rollback(tx).await?;
                self.mirror.apply_each(mirrored, &[], Delivery::Inbox).await
            }
        }
    }
}

#[async_trait]
impl InboundHandler for InboundPipeline {
    async fn apply_delivered(&self, events: &[Received]) -> store::Result<()> {
        let split = Split::of(events);
        self.mirror
            .apply_delivered(&split.mirrored, &split.customer_rows)
            .await?;
        if split.customers.is_empty() {
            return Ok(());
        }
        self.customers.apply_delivered(&split.customers).await
    }

    async fn apply_arrived(&self, events: &[Received]) -> store::Result<bool> {
        let split = Split::of(events);
        if !self
            .mirror
            .apply_arrived(&split.mirrored, &split.customer_rows)
            .await?
        {
            return Ok(false);
        }
        if split.customers.is_empty() {
            return Ok(true);
        }
        self.customers.apply_arrived(&split.customers).await
    }

    async fn apply_claimed_linked(
        &self,
        tx: store::Transaction,
        events: &[Received],
    ) -> store::Result<bool> {
        let split = Split::of(events);
        if !split.mirrored.is_empty() {
            self.mirror_claimed(tx, &split.mirrored).await?;
            // The customers' claims ended with that transaction: the caller claims them again.
            return Ok(split.customers.is_empty());
        }
        self.mirror
            .apply_delivered(&[], &split.customer_rows)
            .await?;
        self.customers
            .apply_claimed_linked(tx, &split.customers)
            .await
    }

    async fn apply_claimed(
        &self,
        tx: store::Transaction,
        events: &[Received],
    ) -> store::Result<()> {
        let split = Split::of(events);
        if split.mirrored.is_empty() {
            self.mirror
                .apply_delivered(&[], &split.customer_rows)
                .await?;
            return self.customers.apply_claimed(tx, &split.customers).await;
        }
        self.mirror_claimed(tx, &split.mirrored).await?;
        if split.customers.is_empty() {
            return Ok(());
        }
        let mut tx = store::begin(&self.pool).await?;
        let ids: Vec<&str> = split
            .customers
            .iter()
            .map(|r| r.event.id.as_str())
            .collect();
        let claimed: HashSet<String> = processed_events::claim_listed(&mut tx, &ids)
            .await?
            .into_iter()
            .collect();
        let still: Vec<Received> = split
            .customers
            .into_iter()
            .filter(|r| claimed.contains(&r.event.id))
            .collect();
        let rows: Vec<Received> = split
            .customer_rows
            .into_iter()
            .filter(|r| claimed.contains(&r.event.id))
            .collect();
        self.mirror.apply_delivered(&[], &rows).await?;
        if still.is_empty() {
            return store::commit(tx).await;
        }
        self.customers.apply_claimed(tx, &still).await
    }

    fn dead_letters(&self) -> &DeadLetters {
        self.customers.dead_letters()
    }
}
