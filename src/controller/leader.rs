//! Which replica writes to the cluster. Every replica watches SyncPolicies and feeds its own
//! registry (each serves webhooks and runs workers), but one alone writes status, Events and
//! finalizers: the holder of a PostgreSQL advisory lock, the same mechanism as the rest of
//! paysync's singleton work, so it needs no extra RBAC (a Lease) and fails over when the
//! leader's database session ends.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::locks::{LockPool, SessionLock};

/// How often a follower tries for the lock, and the leader checks its session is up.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Whether this replica leads, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Resolves the next time this replica becomes the leader; `false` once leadership can
    /// no longer change.
    pub async fn next_gain(&mut self) -> bool {
        loop {
            if self.leading.changed().await.is_err() {
                return false;
            }
            if *self.leading.borrow_and_update() {
                return true;
            }
        }
    }

    /// What follows whether this replica leads, as it changes.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Leadership of the lock named `scope` (the watched namespace), and the task that
    /// contends for it.
    pub fn contend(locks: LockPool, scope: String) -> (Self, Contender) {
        let (tx, leading) = watch::channel(false);
        (Self { leading }, Contender { locks, scope, tx })
    }
}

/// Takes and keeps the leader lock while it can; run with [`Contender::run`].
pub struct Contender {
    locks: LockPool,
    scope: String,
    tx: watch::Sender<bool>,
}

impl Contender {
    /// Contends until `shutdown`, then lets go of the lock.
    pub async fn run(self, shutdown: CancellationToken) {
        hold(self.locks, self.scope, self.tx, shutdown).await;
    }
}

async fn hold(
    locks: LockPool,
    scope: String,
    tx: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut held: Option<SessionLock> = None;
    loop {
        let leading = match held.as_mut() {
            Some(lock) => lock.is_held().await,
            None => match locks.try_lock_leader(&scope).await {
                Ok(lock) => {
                    held = lock;
                    held.is_some()
                }
                Err(e) => {
                    warn!(error = %e, "cannot contend for controller leadership");
                    false
                }
            },
        };
        if !leading {
            held = None;
        }
        if tx.send_if_modified(|current| std::mem::replace(current, leading) != leading) {
            if leading {
                info!(namespace = %scope, "this replica leads: it writes SyncPolicy status");
            } else {
                warn!(namespace = %scope, "this replica no longer leads");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
    tx.send_replace(false);
    if let Some(lock) = held {
        drop(lock.release().await);
    }
}
