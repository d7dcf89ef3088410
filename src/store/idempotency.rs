//! Saved responses of POSTs made with an `Idempotency-Key` header.
//!
//! The key row is inserted first, in the same transaction as the work it guards. A concurrent
//! request with the same key blocks on that row until the first commits (then it replays the
//! saved response) or rolls back (then it does the work itself), so a key never creates twice.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::{DbContext, Result};

/// What the caller must do with a request that carries an idempotency key.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// First use of the key: do the work, then [`record`] the response before committing.
    New,
    /// The key was used before for the same request: answer with this response.
    Replay { status: u16, body: String },
    /// The key was used before for a different request.
    Mismatch,
}

pub async fn claim(conn: &mut PgConnection, key: &str, fingerprint: &[u8]) -> Result<Claim> {
    let inserted = sqlx::query(
        "insert into idempotency_keys (key, request_fingerprint) values ($1, $2) \
         on conflict (key) do nothing",
    )
    .bind(key)
    .bind(fingerprint)
    .execute(&mut *conn)
    .await
    .context("claiming idempotency key")?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let (stored_fingerprint, status, body): (Vec<u8>, Option<i16>, Option<String>) =
        sqlx::query_as(
            "select request_fingerprint, response_status, response_body \
             from idempotency_keys where key = $1",
        )
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .context("reading idempotency key")?;
    if stored_fingerprint != fingerprint {
        return Ok(Claim::Mismatch);
    }
    match (status.and_then(|s| u16::try_from(s).ok()), body) {
        (Some(status), Some(body)) => Ok(Claim::Replay { status, body }),
        _ => Err(super::Error::Corrupt(format!(
            "idempotency key {key:?} has no saved response"
        ))),
    }
}

/// Saves the response for a key claimed in this transaction.
pub async fn record(conn: &mut PgConnection, key: &str, status: u16, body: &str) -> Result<()> {
    sqlx::query(
        "update idempotency_keys set response_status = $2, response_body = $3 where key = $1",
    )
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(i16::MAX))
    .bind(body)
    .execute(conn)
    .await
    .context("saving idempotent response")?;
    Ok(())
}

/// Forgets keys older than `retention`; returns how many were removed.
pub async fn delete_expired(pool: &PgPool, retention: Duration) -> Result<u64> {
    let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let deleted = sqlx::query(
        "delete from idempotency_keys where created_at < now() - make_interval(secs => $1)",
    )
    .bind(seconds as f64)
    .execute(pool)
    .await
    .context("deleting expired idempotency keys")?
    .rows_affected();
    Ok(deleted)
}
