//! Messages that could not be handled: kept with their error until replayed.
//!
//! Recording a dead letter must never fail on what the message holds (a bad message never stops
//! a queue): the payload is stored as bytes, and the key and error, which may quote the
//! message, are made storable (NUL, which PostgreSQL `text` cannot hold, becomes U+FFFD).

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{DbContext, Result};

/// Which side of the sync a dead letter comes from; it decides how the letter is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A local change that could not reach Stripe (key: the local customer id), or an outbound
    /// message nobody could read (key: `topic/partition/offset`).
    Outbound,
    /// A Stripe event that could not be applied (key: the event id), or an inbound message
    /// nobody could read (key: `topic/partition/offset`).
    Inbound,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "outbound" => Some(Self::Outbound),
            "inbound" => Some(Self::Inbound),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: Uuid,
    pub source: Source,
    /// The policy (Stripe account) the message belongs to.
    pub account: String,
    pub key: String,
    /// The message as it arrived.
    pub payload: Vec<u8>,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// Closed without a replay: its cause is gone (`closed_reason` says how).
    pub closed_at: Option<DateTime<Utc>>,
    pub closed_reason: Option<String>,
}

#[derive(FromRow)]
struct DeadLetterRow {
    id: Uuid,
    source: String,
    account: String,
    key: String,
    payload: Vec<u8>,
    error: String,
    attempts: i32,
    first_failed_at: DateTime<Utc>,
    last_failed_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
    closed_reason: Option<String>,
}

impl TryFrom<DeadLetterRow> for DeadLetter {
    type Error = super::Error;

    fn try_from(row: DeadLetterRow) -> Result<Self> {
        let source = Source::parse(&row.source).ok_or_else(|| {
            super::Error::Corrupt(format!(
                "dead letter {} has unknown source {:?}",
                row.id, row.source
            ))
        })?;
        Ok(Self {
            id: row.id,
            source,
            account: row.account,
            key: row.key,
            payload: row.payload,
            error: row.error,
            attempts: row.attempts,
            first_failed_at: row.first_failed_at,
            last_failed_at: row.last_failed_at,
            replayed_at: row.replayed_at,
            closed_at: row.closed_at,
            closed_reason: row.closed_reason,
        })
    }
}

/// A failure to record.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    pub source: Source,
    pub account: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub error: &'a str,
    pub attempts: i32,
}

/// Text as PostgreSQL `text` can store it: NUL is the one character it refuses.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// Records a failure. A key that already has an open dead letter gets that row updated
/// (attempts added, latest error), so a message failing again does not pile up duplicates.
pub async fn record(conn: &mut PgConnection, letter: NewDeadLetter<'_>) -> Result<Uuid> {
    let key = storable(letter.key);
    let error = storable(letter.error);
    let existing: Option<Uuid> = sqlx::query_scalar(
        "update dead_letters set payload = $3, error = $4, attempts = attempts + $5, \
         last_failed_at = now() \
         where source = $1 and key = $2 and replayed_at is null and closed_at is null \
         returning id",
    )
    .bind(letter.source.as_str())
    .bind(key.as_ref())
    .bind(letter.payload)
    .bind(error.as_ref())
    .bind(letter.attempts)
    .fetch_optional(&mut *conn)
    .await
    .context("updating dead letter")?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into dead_letters (id, source, key, payload, error, attempts, account) \
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(letter.source.as_str())
    .bind(key.as_ref())
    .bind(letter.payload)
    .bind(error.as_ref())
    .bind(letter.attempts.max(1))
    .bind(storable(letter.account).as_ref())
    .execute(conn)
    .await
    .context("inserting dead letter")?;
    Ok(id)
}

/// Dead letters, newest first; replayed and closed ones only when asked.
pub async fn list(
    conn: &mut PgConnection,
    include_replayed: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    let rows: Vec<DeadLetterRow> = sqlx::query_as(
        "select id, source, account, key, payload, error, attempts, first_failed_at, \
         last_failed_at, replayed_at, closed_at, closed_reason from dead_letters \
         where ($1 or (replayed_at is null and closed_at is null)) \
         order by id desc limit $2",
    )
    .bind(include_replayed)
    .bind(limit)
    .fetch_all(conn)
    .await
    .context("listing dead letters")?;
    rows.into_iter().map(DeadLetter::try_from).collect()
}

/// Locks one dead letter for replay.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<DeadLetter>> {
    let row: Option<DeadLetterRow> = sqlx::query_as(
        "select id, source, account, key, payload, error, attempts, first_failed_at, \
         last_failed_at, replayed_at, closed_at, closed_reason from dead_letters \
         where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
    .context("loading dead letter")?;
    row.map(DeadLetter::try_from).transpose()
}

pub async fn mark_replayed(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    sqlx::query("update dead_letters set replayed_at = now() where id = $1")
        .bind(id)
        .execute(conn)
        .await
        .context("marking dead letter replayed")?;
    Ok(())
}

/// Open dead letters (neither replayed nor closed), for queue health.
pub async fn open_count(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query_scalar(
        "select count(*) from dead_letters where replayed_at is null and closed_at is null",
    )
    .fetch_one(conn)
    .await
    .context("counting open dead letters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_made_storable_without_losing_its_shape() {
        assert!(matches!(storable("plain"), Cow::Borrowed("plain")));
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn sources_round_trip() {
        for source in [Source::Outbound, Source::Inbound] {
            assert_eq!(Source::parse(source.as_str()), Some(source));
        }
        assert_eq!(Source::parse("sideways"), None);
    }
}
