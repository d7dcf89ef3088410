//! The Events API cursor of each Stripe account, so catch-up reads only what it has not seen.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{DbContext, Result};

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
