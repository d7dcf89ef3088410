//! Messages that could not be handled: kept with their error until replayed.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{DbContext, Result};

#[derive(Debug, Clone, FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub source: String,
    pub key: String,
    pub payload: serde_json::Value,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Records a failure. A key that already has an open dead letter gets that row updated
/// (attempts added, latest error), so a message failing again does not pile up duplicates.
pub async fn record(
    conn: &mut PgConnection,
    source: &str,
    key: &str,
    payload: &serde_json::Value,
    error: &str,
    attempts: i32,
) -> Result<Uuid> {
    let existing: Option<Uuid> = sqlx::query_scalar(
        "update dead_letters set payload = $3, error = $4, attempts = attempts + $5, \
         last_failed_at = now() \
         where source = $1 and key = $2 and replayed_at is null returning id",
    )
    .bind(source)
    .bind(key)
    .bind(payload)
    .bind(error)
    .bind(attempts)
    .fetch_optional(&mut *conn)
    .await
    .context("updating dead letter")?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into dead_letters (id, source, key, payload, error, attempts) \
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(source)
    .bind(key)
    .bind(payload)
    .bind(error)
    .bind(attempts)
    .execute(conn)
    .await
    .context("inserting dead letter")?;
    Ok(id)
}

/// Dead letters, newest first; replayed ones only when asked.
pub async fn list(
    conn: &mut PgConnection,
    include_replayed: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    sqlx::query_as(
        "select id, source, key, payload, error, attempts, first_failed_at, last_failed_at, \
         replayed_at from dead_letters where ($1 or replayed_at is null) \
         order by id desc limit $2",
    )
    .bind(include_replayed)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("listing dead letters")
}

/// Locks one dead letter for replay.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<DeadLetter>> {
    sqlx::query_as(
        "select id, source, key, payload, error, attempts, first_failed_at, last_failed_at, \
         replayed_at from dead_letters where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
    .context("loading dead letter")
}

pub async fn mark_replayed(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("update dead_letters set replayed_at = now() where id = $1")
        .bind(id)
        .execute(conn)
        .await
        .context("marking dead letter replayed")?;
    Ok(())
}
