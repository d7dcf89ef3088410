//! The Events API cursor of each Stripe account, so catch-up reads only what it has not seen.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{DbContext, Result};

/// Namespace of catch-up's advisory locks (the two-key form, apart from the customer locks).
const CATCH_UP_LOCK_NAMESPACE: i32 = 0x7079_6331; // "pyc1"

/// Takes the account's catch-up lock for the rest of the transaction, if no other replica
/// holds it; only one replica catches up an account at a time.
pub async fn try_lock(conn: &mut PgConnection, account: &str) -> Result<bool> {
    sqlx::query_scalar("select pg_try_advisory_xact_lock($1, hashtext($2))")
        .bind(CATCH_UP_LOCK_NAMESPACE)
        .bind(account)
        .fetch_one(conn)
        .await
        .context("taking the catch-up lock")
}

/// The `created` time of the newest event catch-up has seen for `account`.
pub async fn load(conn: &mut PgConnection, account: &str) -> Result<Option<DateTime<Utc>>> {
    let created: Option<Option<DateTime<Utc>>> =
        sqlx::query_scalar("select last_event_created from sync_cursors where account = $1")
            .bind(account)
            .fetch_optional(conn)
            .await
            .context("loading the catch-up cursor")?;
    Ok(created.flatten())
}

pub async fn save(
    conn: &mut PgConnection,
    account: &str,
    last_event_id: Option<&str>,
    last_event_created: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "insert into sync_cursors (account, last_event_id, last_event_created) values ($1, $2, $3) \
         on conflict (account) do update set last_event_id = coalesce(excluded.last_event_id, \
         sync_cursors.last_event_id), last_event_created = excluded.last_event_created, \
         updated_at = now()",
    )
    .bind(account)
    .bind(last_event_id)
    .bind(last_event_created)
    .execute(conn)
    .await
    .context("saving the catch-up cursor")?;
    Ok(())
}
