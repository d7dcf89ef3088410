//! Which replica writes to the cluster. Every replica watches SyncPolicies and feeds its own
//! registry (each serves webhooks and runs workers), but one alone writes status and Events
//! and runs the scheduled reconciles: the holder of a `coordination.k8s.io` Lease in the
//! watched namespace (`paysync-leader`, holder = the pod's name), elected as client-go's
//! leader election does: a holder renews every retry period; another replica takes the Lease
//! once it has seen no renewal for the lease duration (its own clock, so clocks need not
//! agree); a holder that could not renew within the renew deadline steps down, which is
//! shorter than the lease duration, so it stops before anyone may take over. Leadership is
//! also bounded in time where it is read: `is_leader` turns false at the deadline even while
//! a renewal call hangs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The Lease's name in the watched namespace.
pub const LEASE_NAME: &str = "paysync-leader";

/// The election's timing, client-go's defaults unless set (`PAYSYNC_LEADER_*`).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// How long another replica waits, from the last renewal it saw, before taking over.
    pub duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others try.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads, as it changes.
#[derive(Clone, Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Until when the last renewal lets this replica lead.
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Whether this replica leads now: it won the Lease and its last renewal is younger than
    /// the renew deadline.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
            && lock(&self.valid_until).is_some_and(|until| Instant::now() < until)
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

    /// Leadership by the Lease in `leases`' namespace, as `holder`, and the task that
    /// contends for it; `gauge` follows it (`paysync_leader`).
    pub fn contend(
        leases: Api<Lease>,
        holder: String,
        timing: LeaseTiming,
        gauge: Gauge,
    ) -> (Self, Elector) {
        let (tx, leading) = watch::channel(false);
        let valid_until = Arc::new(Mutex::new(None));
        let leadership = Self {
            leading,
            valid_until: valid_until.clone(),
        };
        let elector = Elector {
            leases,
            holder,
            timing,
            tx,
            valid_until,
            gauge,
            observed: None,
        };
        (leadership, elector)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Contends for the Lease; run with [`Elector::run`].
pub struct Elector {
    leases: Api<Lease>,
    holder: String,
    timing: LeaseTiming,
    tx: watch::Sender<bool>,
    valid_until: Arc<Mutex<Option<Instant>>>,
    gauge: Gauge,
    /// The other holder's record as last seen, and when this replica first saw it so.
    observed: Option<(Record, Instant)>,
}

/// What identifies one renewal of a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renewed: Option<MicroTime>,
    duration: Duration,
}

impl Elector {
    /// Contends until `shutdown`; the holder then gives the Lease up, so another replica
    /// takes over at once.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let started = Instant::now();
            // A call may not outlast the renew deadline: a hung API server ends leadership
            // in time (and `is_leader` has turned false already by then).
            let attempt =
                tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew()).await;
            match attempt {
                Ok(Ok(true)) => self.renewed(started),
                Ok(Ok(false)) => self.set_leading(false),
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election: the Lease could not be read or written");
                    self.expire_if_late();
                }
                Err(_) => {
                    warn!("leader election: the Kubernetes API did not answer in time");
                    self.expire_if_late();
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        if self.tx.borrow().to_owned() {
            self.set_leading(false);
            let released = tokio::time::timeout(self.timing.retry_period, self.release()).await;
            if !matches!(released, Ok(Ok(()))) {
                warn!(
                    "leader election: could not give the Lease up; another replica takes over when it expires"
                );
            }
        }
    }

    /// A renewal sent at `sent` succeeded: this replica leads until the renew deadline from
    /// then.
    fn renewed(&mut self, sent: Instant) {
        *lock(&self.valid_until) = Some(sent + self.timing.renew_deadline);
        self.set_leading(true);
    }

    fn expire_if_late(&mut self) {
        let expired = lock(&self.valid_until).is_none_or(|until| Instant::now() >= until);
        if expired {
            self.set_leading(false);
        }
    }

    fn set_leading(&mut self, leading: bool) {
        if !leading {
            *lock(&self.valid_until) = None;
        }
        self.gauge.set(i64::from(leading));
        if self
            .tx
            .send_if_modified(|current| std::mem::replace(current, leading) != leading)
        {
            let namespace = self.leases.resource_url();
            if leading {
                info!(lease = LEASE_NAME, holder = %self.holder, at = %namespace, "this replica leads: it writes SyncPolicy status");
            } else {
                warn!(lease = LEASE_NAME, holder = %self.holder, "this replica no longer leads");
            }
        }
    }

    /// Takes the Lease if it is free or expired, or renews it if held: whether this replica
    /// holds it now. A conflict (another replica wrote first) is a lost round, not an error.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let Some(current) = self.leases.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now.clone(), None)),
            };
            return conflict_is_lost(self.leases.create(&PostParams::default(), &lease).await);
        };
        let spec = current.spec.clone().unwrap_or_default();
        let record = Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renewed: spec.renew_time.clone(),
            duration: Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            ),
        };
        if record.holder != self.holder && !record.holder.is_empty() && !self.expired(&record) {
            return Ok(false);
        }
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(self.spec(now, Some(&spec))),
        };
        conflict_is_lost(
            self.leases
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Whether `record` (another replica's) went unrenewed for its duration, by this
    /// replica's clock since it first saw it.
    fn expired(&mut self, record: &Record) -> bool {
        let now = Instant::now();
        let first_seen = match &self.observed {
            Some((seen, at)) if seen == record => *at,
            _ => {
                self.observed = Some((record.clone(), now));
                now
            }
        };
        now >= first_seen + record.duration
    }

    /// The spec this replica writes: itself as holder, renewed `now`; a new holder's
    /// acquisition counts a transition.
    fn spec(&self, now: MicroTime, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let taking_over =
            previous.is_none_or(|p| p.holder_identity.as_deref() != Some(&self.holder));
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking_over {
                Some(now.clone())
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Gives the Lease up (no holder, one second left), as client-go does on a clean stop.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.leases.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let spec = current.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.holder) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        self.leases
            .replace(LEASE_NAME, &PostParams::default(), &current)
            .await?;
        info!(lease = LEASE_NAME, "gave the Lease up");
        Ok(())
    }
}

fn conflict_is_lost(written: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
