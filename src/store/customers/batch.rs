//! Writing back, in one statement, the rows a batch of Stripe events was decided on.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::email_conflict;
use crate::domain::Customer;
use crate::store::{Error, Result};

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
        let metadata = serde_json::to_string(fields.metadata.as_map())
            .map_err(|e| Error::Corrupt(format!("customer {} metadata: {e}", customer.id)))?;
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

/// Writes the state a batch of Stripe events left customers in (see
/// `sync::inbound::rules::after`), in one statement. `updated_at` is set to now where
/// `changed`.
pub async fn write_back(conn: &mut PgConnection, customers: &[(&Customer, bool)]) -> Result<()> {
    if customers.is_empty() {
        return Ok(());
    }
    let mut columns = Columns::default();
    for (customer, changed) in customers {
        columns.push(customer, *changed)?;
    }
    sqlx::query(
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
         where c.id = u.id",
    )
    .bind(&columns.ids)
    .bind(&columns.emails)
    .bind(&columns.names)
    .bind(&columns.phones)
    .bind(&columns.descriptions)
    .bind(&columns.metadata)
    .bind(&columns.versions)
    .bind(&columns.synced)
    .bind(&columns.states)
    .bind(&columns.event_ats)
    .bind(&columns.hashes)
    .bind(&columns.changed)
    .bind(&columns.deleted)
    .bind(&columns.stripe_ids)
    .execute(conn)
    .await
    .map_err(email_conflict("writing Stripe changes"))?;
    Ok(())
}
