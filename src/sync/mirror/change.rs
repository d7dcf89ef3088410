//! What an event of a mirrored kind writes: read from the event alone (no I/O), then collapsed
//! to one write per row for a batch's statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::kinds::{self, Deletion, EventAction, Kind};
use crate::store::mirror::{Removal, RowWrite};
use crate::stripe::event::StripeEvent;

/// Columns a customer's deletion writes (the rest of the row is kept, `deleted = true`).
const CUSTOMER_DELETED_COLUMNS: &[&str] = &["id", "object", "deleted"];
/// Object ids are short; anything longer is not one.
const MAX_ID_CHARS: usize = 255;

/// One write of an event.
#[derive(Debug, Clone)]
pub enum Change {
    Upsert {
        kind: &'static Kind,
        columns: &'static [&'static str],
        row: RowWrite,
    },
    Remove {
        kind: &'static Kind,
        removal: Removal,
    },
    /// The subscription's complete item list: items not in it are gone.
    Items {
        subscription: String,
        kept: Vec<String>,
        at: DateTime<Utc>,
    },
}

impl Change {
    /// The row a write is to, and which columns it writes: a write of a few columns (a
    /// customer's deletion) never stands in for one of every column.
    fn row_key(&self) -> Option<(&'static str, usize, &str)> {
        match self {
            Self::Upsert { kind, columns, row } => {
                Some((kind.table, columns.len(), id_of(&row.fields)))
            }
            Self::Remove { kind, removal } => Some((kind.table, 0, removal.id.as_str())),
            Self::Items { .. } => None,
        }
    }

    fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Upsert { row, .. } => row.at,
            Self::Remove { removal, .. } => removal.at,
            Self::Items { at, .. } => *at,
        }
    }
}

fn id_of(fields: &Value) -> &str {
    fields.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// The writes of one event of `kind`; `Ok(None)` when it describes nothing to store (an
/// upcoming invoice, which has no id yet). An error says why the event cannot be stored.
pub fn of_event(
    event: &StripeEvent,
    kind: &'static Kind,
    action: EventAction,
) -> Result<Option<Vec<Change>>, String> {
    let Some((fields, id)) = stored_object(event, kind)? else {
        return Ok(None);
    };
    let at = DateTime::from_timestamp(event.created, 0)
        .ok_or_else(|| format!("{}: created {} is not a time", event.kind, event.created))?;
    let stamp = |fields: Map<String, Value>, raw: Option<Value>| RowWrite {
        truncated: truncated_lists(&fields),
        fields: Value::Object(fields),
        raw,
        at,
        event_id: event.id.clone(),
        account: event.account.clone(),
    };
    Ok(Some(match (action, kind.deletion) {
        (EventAction::Delete, Deletion::Remove) => vec![Change::Remove {
            kind,
            removal: Removal { id, at },
        }],
        (EventAction::Delete, Deletion::Flag) => {
            let mut deleted = Map::new();
            deleted.insert("id".into(), Value::String(id));
            deleted.insert("object".into(), Value::String(kind.object.into()));
            deleted.insert("deleted".into(), Value::Bool(true));
            let mut row = stamp(deleted, Some(Value::Object(fields)));
            row.truncated = Vec::new();
            let columns = CUSTOMER_DELETED_COLUMNS;
            vec![Change::Upsert { kind, columns, row }]
        }
        (EventAction::Update, _) => {
            let items = (kind.table == "subscriptions")
                .then(|| subscription_items(&id, at, &fields, &stamp))
                .transpose()?
                .unwrap_or_default();
            // The object is its own complete copy: sent once.
            let row = stamp(fields, None);
            let mut changes = vec![Change::Upsert {
                kind,
                columns: kind.columns,
                row,
            }];
            changes.extend(items);
            changes
        }
    }))
}

/// An object's fields and its id.
type StoredObject = (Map<String, Value>, String);

/// The event's object and its id, once checked to be a `kind` with a usable id; `None` for an
/// invoice without one (upcoming).
fn stored_object(event: &StripeEvent, kind: &Kind) -> Result<Option<StoredObject>, String> {
    let Value::Object(fields) = event.body()?.object else {
        return Err(format!("{}: data.object is not an object", event.kind));
    };
    if fields.get("object").and_then(Value::as_str) != Some(kind.object) {
        let (event_type, object) = (&event.kind, kind.object);
        return Err(format!("{event_type}: data.object is not a {object}"));
    }
    let id = match fields.get("id") {
        None | Some(Value::Null) if kind.object == "invoice" => return Ok(None),
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_ID_CHARS => {
            id.clone()
        }
        _ => {
            let (event_type, object) = (&event.kind, kind.object);
            return Err(format!("{event_type}: the {object} has no usable id"));
        }
    };
    Ok(Some((fields, id)))
}

/// The item rows of a subscription (`price` as the price's id, `deleted = false`), and, when
/// the event carries the whole list, which items it still has.
fn subscription_items(
    subscription: &str,
    at: DateTime<Utc>,
    fields: &Map<String, Value>,
    stamp: &impl Fn(Map<String, Value>, Option<Value>) -> RowWrite,
) -> Result<Vec<Change>, String> {
    let Some(list) = fields.get("items").filter(|items| !items.is_null()) else {
        return Ok(Vec::new());
    };
    let data = list
        .get("data")
        .and_then(Value::as_array)
        .ok_or("the subscription's items are not a list")?;
    let mut changes = Vec::with_capacity(data.len() + 1);
    let mut kept = Vec::with_capacity(data.len());
    for item in data {
        let Value::Object(item_fields) = item else {
            return Err("a subscription item is not an object".into());
        };
        let mut row_fields = item_fields.clone();
        if let Some(price_id) = item_fields.get("price").and_then(|p| p.get("id")) {
            row_fields.insert("price".into(), price_id.clone());
        }
        row_fields.insert("deleted".into(), Value::Bool(false));
        let row = stamp(row_fields, Some(item.clone()));
        match row.fields.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => kept.push(id.to_owned()),
            _ => return Err("a subscription item has no id".into()),
        }
        changes.push(Change::Upsert {
            kind: &kinds::SUBSCRIPTION_ITEMS,
            columns: kinds::SUBSCRIPTION_ITEMS.columns,
            row,
        });
    }
    if list.get("has_more") != Some(&Value::Bool(true)) {
        changes.push(Change::Items {
            subscription: subscription.to_owned(),
            kept,
            at,
        });
    }
    Ok(changes)
}

/// The nested lists an object carries only in part (`{"object": "list", "has_more": true}`).
fn truncated_lists(fields: &Map<String, Value>) -> Vec<String> {
    fields
        .iter()
        .filter(|(_, value)| {
            value.get("object").and_then(Value::as_str) == Some("list")
                && value.get("has_more") == Some(&Value::Bool(true))
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// How a write ranks among those to the same row.
type Rank = (DateTime<Utc>, bool, usize);

/// One write per row: of several for the same row, the newest event's (at equal times a
/// removal, else the later one in the batch). Returns the writes kept, in batch order, each
/// with what it came with (`S`: its event).
pub fn collapse<S>(changes: Vec<(S, Change)>) -> Vec<(S, Change)> {
    // By row (table, columns written, id): the newest event's time, whether it removes the
    // row, and its position.
    let mut winner: HashMap<(&'static str, usize, String), Rank> = HashMap::new();
    for (position, (_, change)) in changes.iter().enumerate() {
        if let Some((table, columns, id)) = change.row_key() {
            let rank = (
                change.at(),
                matches!(change, Change::Remove { .. }),
                position,
            );
            let entry = winner
                .entry((table, columns, id.to_owned()))
                .or_insert(rank);
            if rank > *entry {
                *entry = rank;
            }
        }
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(position, (_, change))| match change.row_key() {
            Some((table, columns, id)) => winner[&(table, columns, id.to_owned())].2 == *position,
            None => true,
        })
        .map(|(_, kept)| kept)
        .collect()
}
