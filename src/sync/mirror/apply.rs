//! Applying a batch: read every event's writes, gate them by policy, collapse them to one per
//! row, then one statement per table and kind of write, with the events' dedup records.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use tracing::warn;

use super::change::{self, Change};
use super::{MirrorSync, kind_of};
use crate::store::mirror::{self, Removal, RowWrite, TableWrite};
use crate::store::processed_events::{self, Seen};
use crate::sync::inbound::rules::Skip;
use crate::sync::inbound::{Delivery, Failure, Outcome, Received};

/// Where a write came from: one of the mirror's own events, or a customer event (whose dedup
/// record paysync's two-way customers keep).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Own(usize),
    Customer,
}

impl MirrorSync {
    /// Applies `own` (events of mirrored kinds) in `conn` with their dedup records, and the
    /// mirror rows of `customers` (customer events); the first failure stops it and the caller
    /// rolls back. Returns the outcomes of `own`.
    pub(super) async fn apply_in(
        &self,
        conn: &mut PgConnection,
        own: &[Received],
        customers: &[Received],
        delivery: Delivery,
    ) -> Result<Vec<Outcome>, Failure> {
        let seen = match delivery {
            Delivery::Kafka | Delivery::Arrival => {
                let references: Vec<_> = own.iter().map(Received::event_ref).collect();
                processed_events::begin_processing_many(conn, &references).await?
            }
            // The caller claimed them from the inbox.
            Delivery::Inbox => HashMap::new(),
        };
        let (outcomes, changes) = self.read_batch(own, customers, &seen)?;
        let primaries = primary_rows(&changes);
        let kept = change::collapse(changes);
        let written = self.write(conn, &kept).await?;
        let outcomes = settle(outcomes, &primaries, &primary_rows(&kept), &written);
        let finished: Vec<(&str, &str)> = own
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| **outcome != Outcome::Duplicate)
            .map(|(received, outcome)| (received.event.id.as_str(), outcome.label()))
            .collect();
        processed_events::finish_many(conn, &finished).await?;
        Ok(outcomes)
    }

    /// The writes of a batch, each with its event, and the outcomes of the events that write
    /// nothing (duplicates, events their policy does not mirror now).
    #[allow(clippy::type_complexity)]
    fn read_batch(
        &self,
        own: &[Received],
        customers: &[Received],
        seen: &HashMap<String, Seen>,
    ) -> Result<(Vec<Option<Outcome>>, Vec<(Source, Change)>), Failure> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; own.len()];
        let mut changes = Vec::new();
        let mut first_time = HashSet::new();
        for (index, received) in own.iter().enumerate() {
            let id = received.event.id.as_str();
            if seen.get(id) == Some(&Seen::Processed) || !first_time.insert(id) {
                outcomes[index] = Some(Outcome::Duplicate);
                continue;
            }
            match self.changes_of(received)? {
                Ok(read) => changes.extend(read.into_iter().map(|c| (Source::Own(index), c))),
                Err(instead) => outcomes[index] = Some(instead),
            }
        }
        for received in customers {
            match self.changes_of(received) {
                Ok(Ok(read)) => changes.extend(read.into_iter().map(|c| (Source::Customer, c))),
                Ok(Err(_)) => {}
                Err(failure) => self.unstorable_customer(received, &failure),
            }
        }
        Ok((outcomes, changes))
    }

    /// The writes of one event, the outcome that stands instead (its policy does not mirror
    /// its kind now, or there is nothing to store), or why it cannot be stored.
    fn changes_of(&self, received: &Received) -> Result<Result<Vec<Change>, Outcome>, Failure> {
        let Some((kind, action)) = kind_of(received) else {
            return Ok(Err(Outcome::NotMirrored));
        };
        if let Err(instead) = self.gate(&received.event.account, kind) {
            return Ok(Err(instead));
        }
        match change::of_event(&received.event, kind, action) {
            Ok(Some(changes)) => Ok(Ok(changes)),
            Ok(None) => Ok(Err(Outcome::NotMirrored)),
            Err(reason) => Err(Failure::Permanent(reason)),
        }
    }

    /// A customer event whose mirror row cannot be written: paysync's two-way customers still
    /// apply it; the mirror row is counted `failed` and logged, not retried.
    pub(super) fn unstorable_customer(&self, received: &Received, failure: &Failure) {
        warn!(event_id = %received.event.id, error = %failure,
              "a customer event cannot be written to the mirror's customers; only paysync's customers apply it");
        self.metrics
            .count(&received.event.account, "customers", "failed");
    }

    /// Writes what the batch kept: upserts by table, then removals, then gone items; returns
    /// the rows written (table, id).
    async fn write(
        &self,
        conn: &mut PgConnection,
        kept: &[(Source, Change)],
    ) -> Result<HashSet<(&'static str, String)>, Failure> {
        let Statements {
            upserts,
            removals,
            items,
        } = self.statements(kept);
        let mut written = HashSet::new();
        // Writes of every column before writes of a few (a customer's deletion flag), which
        // come from later events.
        let mut upserts = upserts;
        upserts.sort_by_key(|(table, _)| std::cmp::Reverse(table.columns.len()));
        for (table, rows) in upserts {
            let ids = mirror::upsert(conn, table, &rows).await?;
            written.extend(ids.into_iter().map(|id| (table.table, id)));
        }
        for (table, removals) in removals {
            let ids = mirror::remove(conn, &self.schema, table, &removals).await?;
            written.extend(ids.into_iter().map(|id| (table, id)));
            // A removal counts as done whether or not a row was there.
            written.extend(removals.into_iter().map(|r| (table, r.id)));
        }
        mirror::flag_gone_items(conn, &self.schema, &items).await?;
        Ok(written)
    }
}

/// Upserts by table and column set.
type Upserts<'a> =
    HashMap<(&'static str, &'static [&'static str]), (TableWrite<'a>, Vec<RowWrite>)>;

/// A batch's writes, by statement.
struct Statements<'a> {
    upserts: Vec<(TableWrite<'a>, Vec<RowWrite>)>,
    removals: HashMap<&'static str, Vec<Removal>>,
    items: Vec<(String, Vec<String>, DateTime<Utc>)>,
}

impl MirrorSync {
    /// Groups the kept writes: one upsert per table and column set, one removal per table,
    /// one statement for gone subscription items.
    fn statements<'a>(&'a self, kept: &[(Source, Change)]) -> Statements<'a> {
        let mut upserts: Upserts<'a> = HashMap::new();
        let mut statements = Statements {
            upserts: Vec::new(),
            removals: HashMap::new(),
            items: Vec::new(),
        };
        for (_, change) in kept {
            match change {
                Change::Upsert { kind, columns, row } => {
                    let table = TableWrite {
                        schema: &self.schema,
                        table: kind.table,
                        columns,
                    };
                    let group = upserts.entry((kind.table, *columns));
                    group
                        .or_insert_with(|| (table, Vec::new()))
                        .1
                        .push(row.clone());
                }
                Change::Remove { kind, removal } => {
                    let group = statements.removals.entry(kind.table).or_default();
                    group.push(removal.clone());
                }
                Change::Items {
                    subscription,
                    kept,
                    at,
                } => {
                    statements
                        .items
                        .push((subscription.clone(), kept.clone(), *at));
                }
            }
        }
        statements.upserts = upserts.into_values().collect();
        statements
    }
}

/// The outcome of every event: those decided before the writes as they were; an event whose
/// own write survived the batch and reached its row applied (or deleted); any other stale.
fn settle(
    outcomes: Vec<Option<Outcome>>,
    primaries: &HashMap<Source, (Row, bool)>,
    surviving: &HashMap<Source, (Row, bool)>,
    written: &HashSet<Row>,
) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, decided)| {
            decided.unwrap_or_else(|| {
                let source = Source::Own(index);
                match (primaries.get(&source), surviving.get(&source)) {
                    (Some((row, removal)), Some((kept, _)))
                        if row == kept && written.contains(row) =>
                    {
                        if *removal {
                            Outcome::Deleted
                        } else {
                            Outcome::Applied
                        }
                    }
                    _ => Outcome::Skipped(Skip::Stale),
                }
            })
        })
        .collect()
}

/// A row of the mirror: its table and id.
type Row = (&'static str, String);

/// The row each event of the batch is about (its first write) and whether it removes it.
fn primary_rows(changes: &[(Source, Change)]) -> HashMap<Source, (Row, bool)> {
    let mut primaries = HashMap::new();
    for (source, change) in changes {
        let row = match change {
            Change::Upsert { kind, row, .. } => ((kind.table, id_of(row)), false),
            Change::Remove { kind, removal } => ((kind.table, removal.id.clone()), true),
            Change::Items { .. } => continue,
        };
        primaries.entry(*source).or_insert(row);
    }
    primaries
}

fn id_of(row: &RowWrite) -> String {
    row.fields
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
