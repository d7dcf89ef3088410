//! Writing back, in one statement, the rows a batch of Stripe events was decided on.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{email_conflict, metadata_text};
use crate::domain::Customer;
use crate::store::Result;
use crate::store::processed_events::{EventRef, finish_many_sql};

/// The columns of the rows written back, one array per column (bound as `unnest` inputs).
#[derive(Default)]
struct Columns<'a> {
    ids: Vec<uuid::Uuid>,
    stripe_ids: Vec<Option<&'a str>>,
    emails: Vec<&'a str>,
    names: Vec<Option<&'a str>>,
    phones: Vec<Option<&'a str>>,
    descriptions: Vec<Option<&'a str>>,
    metadata: Vec<String>,
    versions: Vec<i64>,
    synced: Vec<i64>,
    states: Vec<&'static str>,
    event_ats: Vec<Option<DateTime<Utc>>>,
    hashes: Vec<Option<Vec<u8>>>,
    changed: Vec<bool>,
    deleted: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, customer: &'a Customer, changed: bool) -> Result<()> {
        let fields = &customer.fields;
        let metadata = metadata_text(fields, format_args!("customer {}", customer.id))?;
        self.ids.push(customer.id.as_uuid());
        self.stripe_ids.push(customer.stripe_id.as_deref());
        self.emails.push(fields.email.as_str());
        self.names.push(fields.name.as_deref());
        self.phones.push(fields.phone.as_deref());
        self.descriptions.push(fields.description.as_deref());
        self.metadata.push(metadata);
        self.versions.push(customer.version);
        self.synced.push(customer.stripe_synced_version);
        self.states.push(customer.sync_state.as_str());
        self.event_ats.push(customer.stripe_event_at);
        self.hashes
            .push(customer.stripe_synced_hash.map(|hash| hash.to_vec()));
        self.changed.push(changed);
        self.deleted.push(customer.deleted_at.is_some());
        Ok(())
    }
}

/// The update of [`write_back`]: its parameters are the columns, `$1` to `$14`.
macro_rules! write_back_sql {
    () => {
        "update customers c set email = u.email, name = u.name, phone = u.phone, \
         description = u.description, metadata = u.metadata::jsonb, version = u.version, \
         stripe_synced_version = u.synced, sync_state = u.state, \
         sync_error = case when u.changed then null else c.sync_error end, \
         stripe_event_at = u.event_at, stripe_synced_hash = u.hash, \
         updated_at = case when u.changed then now() else c.updated_at end, \
         deleted_at = case when u.deleted then coalesce(c.deleted_at, now()) else null end, \
         stripe_id = u.stripe_id \
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::int8[], $8::int8[], $9::text[], $10::timestamptz[], $11::bytea[], \
                     $12::bool[], $13::bool[], $14::text[]) \
              as u(id, email, name, phone, description, metadata, version, synced, state, \
                   event_at, hash, changed, deleted, stripe_id) \
         where c.id = u.id"
    };
}

/// Writes the state a batch of Stripe events left customers in (see
/// `sync::inbound::rules::after`), in one statement. `updated_at` is set to now where
/// `changed`.
pub async fn write_back(conn: &mut PgConnection, customers: &[(&Customer, bool)]) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    let columns = Columns::of(customers)?;
    columns
        .bind(sqlx::query(write_back_sql!()))
        .execute(conn)
        .await
        .map_err(email_conflict("writing Stripe changes"))?;
    Ok(())
}

/// [`write_back`] and the dedup records of the batch's events, inserted processed with their
/// outcomes, in one statement (one round trip fewer for every batch applied on arrival or
/// from Kafka). Returns how many records were new: fewer than given means some were
/// recorded already (a redelivery, or an event queued in the inbox), and the caller must not
/// commit what it applied for them.
pub async fn write_back_recording(
    conn: &mut PgConnection,
    customers: &[(&Customer, bool)],
    events: &[(EventRef<'_>, &str)],
) -> Result<u64> {
    let columns = Columns::of(customers)?;
    let records = Records::of(events);
    let query = sqlx::query(concat!(
        "with written as (",
        write_back_sql!(),
        " returning 1) \
         insert into processed_events \
         (event_id, type, account, stripe_customer_id, processed_at, outcome) \
         select id, kind, account, customer, now(), outcome \
         from unnest($15::text[], $16::text[], $17::text[], $18::text[], $19::text[]) \
              as batch (id, kind, account, customer, outcome) \
         on conflict (event_id) do nothing"
    ));
    let inserted = columns
        .bind(query)
        .bind(&records.ids)
        .bind(&records.kinds)
        .bind(&records.accounts)
        .bind(&records.customers)
        .bind(&records.outcomes)
        .execute(conn)
        .await
        .map_err(email_conflict("writing Stripe changes and their events"))?
        .rows_affected();
    Ok(inserted)
}

/// [`write_back`], and the claimed inbox events of the batch marked processed with their
/// outcomes, in one statement: the inbox workers' form of [`write_back_recording`]. Returns
/// how many events it marked.
pub async fn write_back_finishing(
    conn: &mut PgConnection,
    customers: &[(&Customer, bool)],
    events: &[(EventRef<'_>, &str)],
) -> Result<u64> {
    let columns = Columns::of(customers)?;
    let records = Records::of(events);
    let query = sqlx::query(concat!(
        "with written as (",
        write_back_sql!(),
        " returning 1) ",
        finish_many_sql!("$15", "$16")
    ));
    let finished = columns
        .bind(query)
        .bind(&records.ids)
        .bind(&records.outcomes)
        .execute(conn)
        .await
        .map_err(email_conflict(
            "writing Stripe changes and finishing their events",
        ))?
        .rows_affected();
    Ok(finished)
}

/// Dedup records to insert, one array per column.
struct Records<'a> {
    ids: Vec<&'a str>,
    kinds: Vec<&'a str>,
    accounts: Vec<&'a str>,
    customers: Vec<Option<&'a str>>,
    outcomes: Vec<&'a str>,
}

impl<'a> Records<'a> {
    fn of(events: &[(EventRef<'a>, &'a str)]) -> Self {
        Self {
            ids: events.iter().map(|(e, _)| e.event_id).collect(),
            kinds: events.iter().map(|(e, _)| e.kind).collect(),
            accounts: events.iter().map(|(e, _)| e.account).collect(),
            customers: events.iter().map(|(e, _)| e.stripe_customer_id).collect(),
            outcomes: events.iter().map(|(_, outcome)| *outcome).collect(),
        }
    }
}

impl<'a> Columns<'a> {
    fn of(customers: &[(&'a Customer, bool)]) -> Result<Self> {
        let mut columns = Self::default();
        for (customer, changed) in customers {
            columns.push(customer, *changed)?;
        }
        Ok(columns)
    }

    /// Binds the columns as `$1` to `$14` of [`write_back_sql`].
    fn bind<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.ids)
            .bind(&self.emails)
            .bind(&self.names)
            .bind(&self.phones)
            .bind(&self.descriptions)
            .bind(&self.metadata)
            .bind(&self.versions)
            .bind(&self.synced)
            .bind(&self.states)
            .bind(&self.event_ats)
            .bind(&self.hashes)
            .bind(&self.changed)
            .bind(&self.deleted)
            .bind(&self.stripe_ids)
    }
}

/// A query with its arguments.
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
