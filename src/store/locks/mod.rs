//! Connections held while paysync waits on something outside PostgreSQL (a Stripe call, a
//! Kafka acknowledgement): a customer's sync lock, a batch's claim transaction, catch-up's
//! account lock. They come from a pool of their own, so a slow Stripe can never take the
//! connections that serve API requests.
//!
//! Lock order (so no two holders wait on each other): a batch claim (outbox rows or inbox
//! events) → per Stripe customer locks (sorted) → per customer sync locks (sorted keys) →
//! customer rows (by id). A customer's sync lock is a session lock on one of a few shared
//! sessions ([`customer`]); the inbound worker takes the same key as a transaction lock, so it
//! waits for a sync in flight and then knows what paysync wrote.

mod customer;

pub use customer::{CustomerLock, SESSIONS as CUSTOMER_LOCK_SESSIONS};

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use super::{DbContext, Result, Transaction};
use crate::domain::CustomerId;
use customer::CustomerLocks;

/// Namespace of catch-up's advisory locks (the two-key form, apart from the customer locks).
const CATCH_UP_LOCK_NAMESPACE: i32 = 0x7079_6331; // "pyc1"
/// Namespace of the reconciler's advisory locks (one per policy).
const RECONCILE_LOCK_NAMESPACE: i32 = 0x7079_7231; // "pyr1"

/// The advisory lock key of a customer's sync: all 128 bits of its id folded into 64 (the
/// high half alone is the creation millisecond and a little randomness, shared by customers
/// created together).
pub fn customer_key(id: CustomerId) -> i64 {
    let (high, low) = id.as_uuid().as_u64_pair();
    (high ^ low) as i64
}

/// The pool of held connections.
#[derive(Clone, Debug)]
pub struct LockPool {
    pool: PgPool,
    customers: Arc<CustomerLocks>,
}

/// An account-wide session advisory lock (catch-up, reconcile) on a held connection
/// of its own. Release it with [`SessionLock::release`];
/// dropped unreleased (a cancelled task, an error on the way), its connection is closed
/// rather than returned to the pool, which ends the session and so frees the lock.
pub struct SessionLock {
    conn: Option<PoolConnection<Postgres>>,
    namespace: i32,
    account: String,
}

impl LockPool {
    pub fn new(pool: PgPool) -> Self {
        let customers = Arc::new(CustomerLocks::new(pool.clone()));
        Self { pool, customers }
    }

    /// Waits for and takes the sync lock of a customer.
    pub async fn lock_customer(&self, id: CustomerId) -> Result<CustomerLock> {
        self.customers.lock(customer_key(id)).await
    }

    /// Takes an account's catch-up lock if no other replica holds it.
    pub async fn try_lock_catch_up(&self, account: &str) -> Result<Option<SessionLock>> {
        self.try_lock_account(CATCH_UP_LOCK_NAMESPACE, account)
            .await
    }

    /// Takes a policy's reconcile lock (`reconcile:<policy>`) if no other replica or
    /// `paysync reconcile --once` holds it.
    pub async fn try_lock_reconcile(&self, policy: &str) -> Result<Option<SessionLock>> {
        self.try_lock_account(RECONCILE_LOCK_NAMESPACE, policy)
            .await
    }

    async fn try_lock_account(&self, namespace: i32, account: &str) -> Result<Option<SessionLock>> {
        let mut conn = self.acquire().await?;
        let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock($1, hashtext($2))")
            .bind(namespace)
            .bind(account)
            .fetch_one(&mut *conn)
            .await
            .context("taking an account lock")?;
        Ok(taken.then(|| SessionLock {
            conn: Some(conn),
            namespace,
            account: account.to_owned(),
        }))
    }

    /// A transaction on a held connection, for a claim kept while its batch is worked on.
    pub async fn begin(&self) -> Result<Transaction> {
        self.pool
            .begin()
            .await
            .context("starting a claim transaction")
    }

    /// [`Self::begin`], finding rows by their indexes only (`store::find_by_key_only`), in
    /// one round trip: for a claim whose batch is then applied by key.
    pub async fn begin_by_key_only(&self) -> Result<Transaction> {
        self.pool
            .begin_with(concat!("begin; ", super::by_key_only!()))
            .await
            .context("starting a claim transaction")
    }

    /// Closes every held connection (at shutdown, after the tasks stopped); the pool's close
    /// waits for connections still out, so the sync lock sessions are closed first.
    pub async fn close(&self) {
        self.customers.close().await;
        self.pool.close().await;
    }

    async fn acquire(&self) -> Result<PoolConnection<Postgres>> {
        self.pool
            .acquire()
            .await
            .context("acquiring a connection for a lock")
    }
}

impl SessionLock {
    pub async fn release(mut self) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let unlocked = sqlx::query("select pg_advisory_unlock($1, hashtext($2))")
            .bind(self.namespace)
            .bind(&self.account)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Not returned to the pool with the lock possibly still held.
            drop(conn.detach());
        }
        unlocked.map(drop).context("releasing a lock")
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn customers_created_in_the_same_millisecond_get_different_keys() {
        let a = Uuid::from_u64_pair(0x0190_a5a4_0000_7000, 0x8000_0000_0000_0001);
        let b = Uuid::from_u64_pair(0x0190_a5a4_0000_7000, 0x8000_0000_0000_0002);
        assert_ne!(
            customer_key(CustomerId::from_uuid(a)),
            customer_key(CustomerId::from_uuid(b))
        );
    }
}
