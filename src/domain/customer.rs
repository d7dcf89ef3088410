use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::metadata::MergeError;
use super::{
    CustomerId, Description, Email, Metadata, MetadataPatch, Name, Phone, ValidationError,
};

/// Where a customer stands with Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// A local change has not reached Stripe yet.
    Pending,
    /// Stripe matches `stripe_synced_version`, which equals `version`.
    Synced,
    /// The last attempt failed for good; `sync_error` says why (see dead letters).
    Failed,
    /// Under `deletion: Orphan`, the other side's record was deleted: this one stays, unlinked.
    Orphaned,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Synced => "synced",
            Self::Failed => "failed",
            Self::Orphaned => "orphaned",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "pending" => Ok(Self::Pending),
            "synced" => Ok(Self::Synced),
            "failed" => Ok(Self::Failed),
            "orphaned" => Ok(Self::Orphaned),
            other => Err(ValidationError::new(
                "sync_state",
                format!("unknown state {other:?}"),
            )),
        }
    }
}

/// What a local write did, as recorded in the outbox for the outbound worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// The fields a customer shares with Stripe: what the application edits and sync compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerFields {
    pub email: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
}

/// SHA-256 of a customer's synced fields: compact enough to keep for every customer, so
/// content can be compared with what was synced without storing it twice.
pub type ContentHash = [u8; 32];

impl CustomerFields {
    pub fn content_hash(&self) -> ContentHash {
        // JSON of a tuple is unambiguous (no field can run into the next), and metadata is a
        // sorted map, so equal fields always hash equally. Stored hashes depend on this exact
        // encoding: changing it makes every stored hash stale. Encoding strings and a map of
        // strings cannot fail; the empty fallback is unreachable.
        let canonical = serde_json::to_vec(&(
            &self.email,
            &self.name,
            &self.phone,
            &self.description,
            self.metadata.as_map(),
        ))
        .unwrap_or_default();
        Sha256::digest(&canonical).into()
    }
}

/// A customer as stored locally, with its sync bookkeeping.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: CustomerId,
    /// The SyncPolicy / Stripe account this customer syncs with.
    pub account: String,
    pub fields: CustomerFields,
    /// Bumped by every change, local or inbound; the outbound worker syncs up to it.
    pub version: i64,
    pub stripe_id: Option<String>,
    /// The highest `version` Stripe is known to match.
    pub stripe_synced_version: i64,
    pub sync_state: SyncState,
    pub sync_error: Option<String>,
    /// `created` of the last Stripe event applied (or found already applied): older events
    /// never overwrite newer ones.
    pub stripe_event_at: Option<DateTime<Utc>>,
    /// paysync's last write of this customer to Stripe.
    pub stripe_write: Option<WriteWindow>,
    /// The `version` paysync last wrote to Stripe (`metadata.paysync_version` of its last
    /// write); `None` before its first write recorded so. A Stripe customer holding an older
    /// one than this holds a stale write of paysync's (a request that landed late).
    pub stripe_written_version: Option<i64>,
    /// [`CustomerFields::content_hash`] of what Stripe holds, as far as paysync knows.
    pub stripe_synced_hash: Option<ContentHash>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When paysync last tried to create it in Stripe (recorded before the call); `None`:
    /// never, so nothing in Stripe can be this customer's and a create needs no lookup.
    pub create_attempted_at: Option<DateTime<Utc>>,
    /// Until when that attempt may still reach Stripe (it got no answer: a timeout, a crash);
    /// `None` once answered. No new create is sent before then: a lookup cannot see a create
    /// still on the wire.
    pub create_in_flight_until: Option<DateTime<Utc>>,
}

impl Customer {
    /// Whether syncing it to Stripe means creating it there (live, and not linked yet).
    pub fn needs_create(&self) -> bool {
        self.deleted_at.is_none() && self.stripe_id.is_none()
    }

    /// How long until an earlier create attempt can no longer land in Stripe (by this
    /// process's clock, at `now`); `None` when none may be on its way.
    pub fn create_fenced_for(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        if self.stripe_id.is_some() {
            return None;
        }
        let until = self.create_in_flight_until?;
        (until > now).then(|| (until - now).to_std().unwrap_or_default())
    }
}

#[cfg(test)]
impl Customer {
    /// A linked customer for unit tests (Ada, plan pro): version `version`, Stripe synced up
    /// to `synced`, last changed at `updated`.
    pub(crate) fn fixture(version: i64, synced: i64, updated: DateTime<Utc>) -> Self {
        Self {
            id: CustomerId::new(),
            account: "default".into(),
            fields: CustomerFields {
                email: "ada@example.com".into(),
                name: Some("Ada".into()),
                phone: None,
                description: None,
                metadata: Metadata::from_stored(std::collections::BTreeMap::from([(
                    "plan".into(),
                    "pro".into(),
                )])),
            },
            version,
            stripe_id: Some("cus_1".into()),
            stripe_synced_version: synced,
            sync_state: if synced >= version {
                SyncState::Synced
            } else {
                SyncState::Pending
            },
            sync_error: None,
            stripe_event_at: None,
            stripe_write: None,
            stripe_written_version: None,
            stripe_synced_hash: None,
            created_at: updated,
            updated_at: updated,
            deleted_at: None,
            create_attempted_at: None,
            create_in_flight_until: None,
        }
    }
}

/// When a write to Stripe was sent and when its answer arrived (paysync's clock): Stripe
/// applied it somewhere in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteWindow {
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
}

/// A validated request to create a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    pub email: Email,
    pub name: Option<Name>,
    pub phone: Option<Phone>,
    pub description: Option<Description>,
    pub metadata: Metadata,
}

impl NewCustomer {
    pub fn into_fields(self) -> CustomerFields {
        CustomerFields {
            email: self.email.into_inner(),
            name: self.name.map(Name::into_inner),
            phone: self.phone.map(Phone::into_inner),
            description: self.description.map(Description::into_inner),
            metadata: self.metadata,
        }
    }
}

/// A validated partial update with JSON Merge Patch meaning: an absent field is kept,
/// `Some(None)` clears it, and metadata keys are merged one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerPatch {
    pub email: Option<Email>,
    pub name: Option<Option<Name>>,
    pub phone: Option<Option<Phone>>,
    pub description: Option<Option<Description>>,
    /// `Some(None)` removes all keys.
    pub metadata: Option<Option<MetadataPatch>>,
}

impl CustomerPatch {
    /// The fields after this patch. Fails only when the merged metadata breaks a limit,
    /// which cannot be known before the current metadata is read.
    pub fn apply_to(&self, current: &CustomerFields) -> Result<CustomerFields, MergeError> {
        let metadata = match &self.metadata {
            None => current.metadata.clone(),
            Some(None) => Metadata::default(),
            Some(Some(patch)) => current.metadata.merged(patch)?,
        };
        Ok(CustomerFields {
            email: self
                .email
                .as_ref()
                .map_or_else(|| current.email.clone(), |e| e.as_str().to_owned()),
            name: pick(&self.name, &current.name, |n| n.clone().into_inner()),
            phone: pick(&self.phone, &current.phone, |p| p.clone().into_inner()),
            description: pick(&self.description, &current.description, |d| {
                d.clone().into_inner()
            }),
            metadata,
        })
    }
}

fn pick<T>(
    patch: &Option<Option<T>>,
    current: &Option<String>,
    text: impl Fn(&T) -> String,
) -> Option<String> {
    match patch {
        None => current.clone(),
        Some(value) => value.as_ref().map(text),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn fields() -> CustomerFields {
        CustomerFields {
            email: "ada@example.com".into(),
            name: Some("Ada".into()),
            phone: Some("+1 555".into()),
            description: None,
            metadata: Metadata::parse(BTreeMap::from([("plan".into(), "pro".into())])).unwrap(),
        }
    }

    #[test]
    fn empty_patch_changes_nothing() {
        assert_eq!(
            CustomerPatch::default().apply_to(&fields()).unwrap(),
            fields()
        );
    }

    #[test]
    fn patch_sets_clears_and_merges() {
        let patch = CustomerPatch {
            email: Some(Email::parse("lovelace@example.com").unwrap()),
            name: Some(None),
            description: Some(Description::parse("VIP").unwrap()),
            metadata: Some(Some(BTreeMap::from([
                ("plan".into(), None),
                ("seats".into(), Some("3".into())),
            ]))),
            ..CustomerPatch::default()
        };
        let after = patch.apply_to(&fields()).unwrap();
        assert_eq!(after.email, "lovelace@example.com");
        assert_eq!(after.name, None);
        assert_eq!(after.phone.as_deref(), Some("+1 555"));
        assert_eq!(after.description.as_deref(), Some("VIP"));
        assert_eq!(
            after.metadata.as_map(),
            &BTreeMap::from([("seats".to_owned(), "3".to_owned())])
        );
    }

    #[test]
    fn null_metadata_removes_every_key() {
        let patch = CustomerPatch {
            metadata: Some(None),
            ..CustomerPatch::default()
        };
        assert!(
            patch
                .apply_to(&fields())
                .unwrap()
                .metadata
                .as_map()
                .is_empty()
        );
    }

    #[test]
    fn content_hashes_differ_with_any_field_and_not_otherwise() {
        let base = fields();
        assert_eq!(base.content_hash(), fields().content_hash());
        let mut renamed = fields();
        renamed.name = Some("Ada L.".into());
        let mut shifted = fields();
        // The same characters split differently between fields.
        shifted.name = Some("Ada+1 555".into());
        shifted.phone = None;
        let mut tagged = fields();
        tagged.metadata = Metadata::parse(BTreeMap::from([("plan".into(), "max".into())])).unwrap();
        for other in [renamed, shifted, tagged] {
            assert_ne!(base.content_hash(), other.content_hash(), "{other:?}");
        }
    }

    #[test]
    fn sync_state_round_trips() {
        for state in [
            SyncState::Pending,
            SyncState::Synced,
            SyncState::Failed,
            SyncState::Orphaned,
        ] {
            assert_eq!(SyncState::parse(state.as_str()).unwrap(), state);
        }
        assert!(SyncState::parse("lost").is_err());
    }
}
