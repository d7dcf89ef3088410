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
