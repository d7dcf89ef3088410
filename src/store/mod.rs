//! PostgreSQL access: one module per table, each function a query or one unit of work.
//!
//! Functions take `&mut PgConnection` so the caller decides the transaction: a customer write
//! and its outbox row always commit together (no dual write: a change is in the outbox if and
//! only if it is committed).

mod connection;
pub mod customers;
pub mod dead_letters;
pub mod idempotency;
pub mod locks;
pub mod mirror;
pub mod outbox;
pub mod processed_events;
pub mod reconcile_runs;
pub mod sync_cursors;
mod wakeup;

pub use connection::{connect, describe_url, pool_options};
pub use wakeup::Wakeup;

use sqlx::migrate::Migrator;
use sqlx::{PgConnection, PgPool};

use crate::domain::{CustomerId, MirrorSchema, ValidationError};

/// The schema, embedded in the binary so `paysync migrate` needs no files at run time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

pub use crate::domain::DEFAULT_ACCOUNT;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("customer {0} not found")]
    CustomerNotFound(CustomerId),
    #[error("customer {id} is at version {current}, not {expected}")]
    VersionMismatch {
        id: CustomerId,
        expected: i64,
        current: i64,
    },
    #[error("another live customer already uses this email")]
    EmailTaken,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A metadata patch that is valid alone but leaves the customer over the key limit.
    #[error("{0}")]
    MetadataFull(String),
    /// An outbound sync of the customer is in flight (its sync lock is held), and the caller
    /// chose not to wait for it.
    #[error("an outbound sync of the customer is in flight")]
    SyncInFlight,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("{context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// PostgreSQL refused the statement for the data it carries (SQLSTATE class 22, data
    /// exception: a NUL in text, a value out of range; class 23, integrity violation): doing
    /// it again with the same data fails again.
    pub fn is_data_error(&self) -> bool {
        match self {
            Self::EmailTaken | Self::Invalid(_) | Self::MetadataFull(_) | Self::Corrupt(_) => true,
            Self::Database {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }
}

/// Attaches what paysync was doing to a database error.
pub(crate) trait DbContext<T> {
    fn context(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Database { context, source })
    }
}

/// A transaction on the pool.
pub type Transaction = sqlx::Transaction<'static, sqlx::Postgres>;

pub async fn begin(pool: &PgPool) -> Result<Transaction> {
    pool.begin().await.context("starting transaction")
}

pub async fn commit(tx: Transaction) -> Result<()> {
    tx.commit().await.context("committing transaction")
}

/// Rolls back now, rather than when the connection is next used: for a caller that then takes
/// again the locks the transaction held (a rollback on drop runs a moment later, in the
/// background, and a `SKIP LOCKED` claim meanwhile would skip rows that are free).
pub async fn rollback(tx: Transaction) -> Result<()> {
    tx.rollback().await.context("rolling back")
}

/// Makes the rest of the transaction find rows by their indexes, never by scanning a table.
/// For a transaction whose statements all look rows up by key (applying a batch of events):
/// on a table whose statistics are stale (new, or grown fast since autovacuum last analyzed
/// it) the planner takes it for a few rows and scans it, a cost that grows with every row
/// (measured: 12 ms per batch at 3,000 events kept, against 0.1 ms by the primary key).
///
/// Its statements also keep one generic plan each: the planner would otherwise plan each
/// execution again for its array arguments (measured: 0.1–0.3 ms of a 1 ms transaction
/// applying one event), and by key the plan is the same whatever the arrays hold.
pub async fn find_by_key_only(conn: &mut PgConnection) -> Result<()> {
    sqlx::raw_sql(by_key_only!())
        .execute(conn)
        .await
        .context("preferring indexes")?;
    Ok(())
}

/// The settings of [`find_by_key_only`] (a macro: SQL is built from literals only).
macro_rules! by_key_only {
    () => {
        "set local enable_seqscan = off; set local plan_cache_mode = force_generic_plan"
    };
}
use by_key_only;

/// A transaction that finds rows by their indexes only ([`find_by_key_only`]), begun in one
/// round trip.
pub async fn begin_by_key_only(pool: &PgPool) -> Result<Transaction> {
    pool.begin_with(concat!("begin; ", by_key_only!()))
        .await
        .context("starting transaction")
}

/// One pooled connection, for reads that need no transaction.
pub async fn acquire(pool: &PgPool) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    pool.acquire()
        .await
        .context("acquiring a database connection")
}

/// Whether the database holds paysync's tables (it was migrated).
pub async fn has_schema(conn: &mut sqlx::PgConnection) -> Result<bool> {
    sqlx::query_scalar(
        "select to_regclass('customers') is not null and to_regclass('dead_letters') is not null",
    )
    .fetch_one(conn)
    .await
    .context("checking for paysync's tables")
}

/// Applies pending migrations; safe to run concurrently from several replicas (sqlx takes an
/// advisory lock).
/// Then the billing mirror's schema.
pub async fn migrate(pool: &PgPool, mirror_schema: &MirrorSchema) -> anyhow::Result<()> {
    anyhow::Context::context(MIGRATOR.run(pool).await, "applying database migrations")?;
    mirror::migrate(pool, mirror_schema).await
}
