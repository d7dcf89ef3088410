//! The mirror of Stripe's billing objects: one table per kind in the mirror schema
//! (`PAYSYNC_MIRROR_SCHEMA`), each row the object's columns, the complete object as received
//! (`_raw_data`), the policy it came for (`_account`) and the event that wrote it
//! (`_event_id`, `last_synced_at` = that event's time).
//!
//! Writes are ordered by event time: a row takes an object only from an event newer than the
//! one it holds, and a removed object's tombstone keeps older events from bringing it back.

mod schema;
mod write;

pub use crate::domain::MirrorSchema;
pub use schema::migrate;
pub use write::{Removal, RowWrite, TableWrite, flag_gone_items, remove, upsert};
