//! Customers' sync locks, many on a few shared sessions.
//!
//! A sync holds its customer's lock while Stripe answers (up to seconds). A connection per
//! sync in flight would tie the number in flight (the Stripe budget × its latency: 100 at 1 s
//! in live mode) to PostgreSQL's connection limit. An advisory session lock belongs to the
//! session, and one session can hold the locks of many customers: a lock is tried
//! (`pg_try_advisory_lock`) on the session its key maps to, and a customer whose lock is held
//! elsewhere (the inbound worker applying its events, a sync on another replica) is tried
//! again after a short backoff. PostgreSQL lets a session take one key many times, so this
//! process also keeps the keys it holds: a second sync of one customer here waits like any
//! other.
//!
//! A session holds a connection only while it holds a lock: the last release returns it to
//! the pool (so the pool closes when idle). A lost session frees every lock it held, and the
//! syncs holding them go on (as one did on a lost connection of its own); the next lock on
//! that session opens a new one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;
use tracing::warn;

use crate::backoff::Backoff;
use crate::store::{DbContext, Result};

/// Sessions the sync locks of all customers share (each a held connection of the lock pool).
pub const SESSIONS: usize = 2;

/// Between tries of a lock held elsewhere: inbound holds one for a batch transaction
/// (milliseconds), a sync for a Stripe call.
const RETRY: Backoff = Backoff {
    base: Duration::from_millis(2),
    max: Duration::from_millis(100),
};

pub(super) struct CustomerLocks {
    pool: PgPool,
    sessions: Vec<tokio::sync::Mutex<Session>>,
    /// The keys this process holds (or is taking) on its sessions.
    held: Mutex<HashSet<i64>>,
}

impl std::fmt::Debug for CustomerLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerLocks")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// One shared session: its connection while it holds locks.
#[derive(Default)]
struct Session {
    conn: Option<PoolConnection<Postgres>>,
    /// Locks held on it now.
    holders: usize,
    /// Counts the connections it had: a lock taken on an earlier one ended with it.
    generation: u64,
}

/// A customer's sync lock. Release it with [`CustomerLock::release`]; dropped unreleased (a
/// cancelled task), it is released in the background.
#[derive(Debug)]
pub struct CustomerLock {
    locks: Arc<CustomerLocks>,
    key: i64,
    generation: u64,
    released: bool,
}

impl CustomerLocks {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sessions: (0..SESSIONS).map(|_| Default::default()).collect(),
            held: Mutex::new(HashSet::new()),
        }
    }

    /// Waits for and takes the lock of `key`. Cancel-safe: a try the caller stops waiting
    /// for runs to its end, and a lock it took then is released.
    pub(super) async fn lock(self: &Arc<Self>, key: i64) -> Result<CustomerLock> {
        let mut attempt = 0;
        let generation = loop {
            if let Some(generation) = self.try_lock(key).await? {
                break generation;
            }
            attempt += 1;
            tokio::time::sleep(RETRY.jittered(attempt, None)).await;
        };
        Ok(CustomerLock {
            locks: Arc::clone(self),
            key,
            generation,
            released: false,
        })
    }

    /// The session's generation if the lock was taken.
    async fn try_lock(self: &Arc<Self>, key: i64) -> Result<Option<u64>> {
        let (answer, taken) = oneshot::channel();
        let locks = Arc::clone(self);
        tokio::spawn(async move {
            let taken = locks.try_lock_now(key).await;
            if let Err(Ok(Some(generation))) = answer.send(taken) {
                // Nobody waits for it any more, so nobody would release it.
                if let Err(e) = locks.unlock(key, generation).await {
                    warn!(error = %e, "releasing a sync lock nobody waited for");
                }
            }
        });
        // Only a panic in the task drops the answer: not taken.
        taken.await.unwrap_or(Ok(None))
    }

    async fn try_lock_now(&self, key: i64) -> Result<Option<u64>> {
        if !self.held().insert(key) {
            return Ok(None);
        }
        let taken = self.try_on_session(key).await;
        if !matches!(taken, Ok(Some(_))) {
            self.held().remove(&key);
        }
        taken
    }

    async fn try_on_session(&self, key: i64) -> Result<Option<u64>> {
        let mut session = self.session(key).lock().await;
        let conn = match session.conn.take() {
            Some(conn) => conn,
            None => self
                .pool
                .acquire()
                .await
                .context("acquiring a connection for sync locks")?,
        };
        let conn = session.conn.insert(conn);
        let taken: sqlx::Result<bool> = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut **conn)
            .await;
        match taken {
            Ok(true) => {
                session.holders += 1;
                return Ok(Some(session.generation));
            }
            Ok(false) => session.return_if_idle(),
            Err(_) => session.lose(),
        }
        taken.map(|_| None).context("taking a customer's sync lock")
    }

    async fn unlock(&self, key: i64, generation: u64) -> Result<()> {
        let unlocked = {
            let mut guard = self.session(key).lock().await;
            let session = &mut *guard;
            match session.conn.as_mut() {
                Some(conn) if session.generation == generation => {
                    let result = sqlx::query("select pg_advisory_unlock($1)")
                        .bind(key)
                        .execute(&mut **conn)
                        .await;
                    if result.is_ok() {
                        session.holders = session.holders.saturating_sub(1);
                        session.return_if_idle();
                    } else {
                        session.lose();
                    }
                    result.map(drop)
                }
                // The session it was taken on was lost, and the lock with it.
                _ => Ok(()),
            }
        };
        self.held().remove(&key);
        unlocked.context("releasing a customer's sync lock")
    }

    /// Ends the sessions (and so any lock still held on them).
    pub(super) async fn close(&self) {
        for session in &self.sessions {
            let conn = session.lock().await.end();
            if let Some(conn) = conn
                && let Err(e) = conn.close().await
            {
                warn!(error = %e, "closing a sync lock session");
            }
        }
    }

    fn session(&self, key: i64) -> &tokio::sync::Mutex<Session> {
        &self.sessions[key.rem_euclid(SESSIONS as i64) as usize]
    }

    fn held(&self) -> MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Session {
    /// With no lock held, the connection goes back to the pool.
    fn return_if_idle(&mut self) {
        if self.holders == 0 {
            self.conn = None;
        }
    }

    /// Takes the connection out: every lock on it is forgotten (it ends with the session).
    fn end(&mut self) -> Option<PoolConnection<Postgres>> {
        self.holders = 0;
        self.generation += 1;
        self.conn.take()
    }

    /// Closes a session that failed (never returned to the pool with locks possibly held):
    /// PostgreSQL frees its locks when it ends.
    fn lose(&mut self) {
        if let Some(conn) = self.end() {
            drop(conn.detach());
        }
    }
}

impl CustomerLock {
    /// Releases the lock; the release runs to its end even if the caller stops waiting.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        let (locks, key, generation) = (Arc::clone(&self.locks), self.key, self.generation);
        match tokio::spawn(async move { locks.unlock(key, generation).await }).await {
            Ok(result) => result,
            // The task panicked.
            Err(_) => Err(sqlx::Error::WorkerCrashed).context("releasing a customer's sync lock"),
        }
    }
}

impl Drop for CustomerLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (locks, key, generation) = (Arc::clone(&self.locks), self.key, self.generation);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = locks.unlock(key, generation).await {
                        warn!(error = %e, "releasing a dropped sync lock");
                    }
                });
            }
            // No runtime left: the process is ending, and its sessions with it.
            Err(_) => {
                locks.held().remove(&key);
            }
        }
    }
}
