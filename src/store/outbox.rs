//! The transactional outbox: what the relay publishes to the outbound topic.

use sqlx::PgConnection;
use uuid::Uuid;

use super::{DbContext, Result};
use crate::domain::{CustomerId, Op};

/// Records a committed-together change of `customer_id` to `version`. Must run in the same
/// transaction as the customer write; the insert trigger wakes the relay on commit.
pub async fn insert(
    conn: &mut PgConnection,
    customer_id: CustomerId,
    op: Op,
    version: i64,
) -> Result<()> {
    sqlx::query("insert into outbox (id, customer_id, op, version) values ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(customer_id.as_uuid())
        .bind(op.as_str())
        .bind(version)
        .execute(conn)
        .await
        .context("inserting outbox row")?;
    Ok(())
}

/// An outbox row waiting to be published (Kafka) or synced (PostgreSQL transport).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub op: String,
    pub version: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Claims up to `limit` unpublished rows, oldest first, for the rest of the transaction.
/// Rows another transaction holds are skipped, so any number of replicas can work at once.
pub async fn claim_unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "select id, customer_id, op, version, created_at from outbox \
         where published_at is null order by id limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("claiming outbox rows")
}

pub async fn mark_published(conn: &mut PgConnection, ids: &[Uuid]) -> Result<()> {
    sqlx::query("update outbox set published_at = now() where id = any($1)")
        .bind(ids)
        .execute(conn)
        .await
        .context("marking outbox rows published")?;
    Ok(())
}

/// Rows not yet published.
pub async fn backlog(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(conn)
        .await
        .context("counting the outbox backlog")
}

/// The channel the outbox insert trigger notifies on.
pub const NOTIFY_CHANNEL: &str = "paysync_outbox";
