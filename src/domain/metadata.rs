use std::collections::BTreeMap;

use serde::Serialize;

use super::ValidationError;

/// Stripe caps metadata at 50 keys per object.
pub const STRIPE_MAX_KEYS: usize = 50;
/// Stripe caps a metadata key at 40 characters.
pub const MAX_KEY_CHARS: usize = 40;
/// Stripe caps a metadata value at 500 characters.
pub const MAX_VALUE_CHARS: usize = 500;
/// paysync writes its own keys into every Stripe customer's metadata (`paysync_id`,
/// `paysync_version`), so the prefix is reserved for it.
pub const RESERVED_PREFIX: &str = "paysync_";
/// How many of Stripe's keys paysync itself uses.
pub const RESERVED_KEYS: usize = 2;
/// What is left for the application: the reserved keys count against Stripe's limit too.
pub const MAX_USER_KEYS: usize = STRIPE_MAX_KEYS - RESERVED_KEYS;

/// Why a metadata patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// A key or value of the patch breaks a rule, whatever is stored.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The patch is valid, but with the keys already stored the result has too many.
    #[error(
        "metadata: the result would have {keys} keys; at most {MAX_USER_KEYS} are allowed \
         (remove keys in the same patch with null)"
    )]
    TooManyKeys { keys: usize },
}

/// Application metadata of a customer, valid as Stripe metadata once paysync adds its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

/// A JSON Merge Patch of metadata: a value sets the key, `None` (JSON `null`) removes it.
pub type MetadataPatch = BTreeMap<String, Option<String>>;

impl Metadata {
    pub fn parse(entries: BTreeMap<String, String>) -> Result<Self, ValidationError> {
        for (key, value) in &entries {
            check_key(key)?;
            check_value(key, value)?;
        }
        check_count(entries.len())?;
        Ok(Self(entries))
    }

    /// Trusted data already stored by paysync; it was validated when it was written.
    pub fn from_stored(entries: BTreeMap<String, String>) -> Self {
        Self(entries)
    }

    /// The metadata after `patch`. Each key and value is checked; a result over the key limit
    /// (which depends on what is stored, not on the patch alone) is [`MergeError::TooManyKeys`].
    pub fn merged(&self, patch: &MetadataPatch) -> Result<Self, MergeError> {
        let mut entries = self.0.clone();
        for (key, value) in patch {
            check_key(key)?;
            match value {
                Some(value) => {
                    check_value(key, value)?;
                    entries.insert(key.clone(), value.clone());
                }
                None => {
                    entries.remove(key);
                }
            }
        }
        if entries.len() > MAX_USER_KEYS {
            return Err(MergeError::TooManyKeys {
                keys: entries.len(),
            });
        }
        Ok(Self(entries))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

fn check_key(key: &str) -> Result<(), ValidationError> {
    let field = || format!("metadata.{key}");
    if key.is_empty() {
        return Err(ValidationError::new("metadata", "keys must not be empty"));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(ValidationError::new(
            field(),
            format!("keys must be at most {MAX_KEY_CHARS} characters"),
        ));
    }
    if key.contains(['[', ']']) || key.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field(),
            "keys must not contain square brackets or control characters",
        ));
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Err(ValidationError::new(
            field(),
            format!("keys starting with {RESERVED_PREFIX:?} are reserved for paysync"),
        ));
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        // Stripe treats an empty value as "delete this key", so storing one locally would
        // make the two sides differ forever.
        return Err(ValidationError::new(
            format!("metadata.{key}"),
            "values must not be empty (use null in a PATCH to remove a key)",
        ));
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(ValidationError::new(
            format!("metadata.{key}"),
            format!("values must be at most {MAX_VALUE_CHARS} characters"),
        ));
    }
    // As in a description: line breaks and tabs are text, other control characters (NUL
    // above all, which PostgreSQL cannot store) are not.
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(ValidationError::new(
            format!("metadata.{key}"),
            "values must not contain control characters other than line breaks and tabs",
        ));
    }
    Ok(())
}

fn check_count(count: usize) -> Result<(), ValidationError> {
    if count > MAX_USER_KEYS {
        return Err(ValidationError::new(
            "metadata",
            format!(
                "at most {MAX_USER_KEYS} keys ({STRIPE_MAX_KEYS} allowed by Stripe, {RESERVED_KEYS} used by paysync)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(n: usize) -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
    }

    #[test]
    fn accepts_up_to_the_user_key_limit() {
        assert!(Metadata::parse(keys(MAX_USER_KEYS)).is_ok());
        let err = Metadata::parse(keys(MAX_USER_KEYS + 1)).unwrap_err();
        assert_eq!(err.field, "metadata");
    }

    #[test]
    fn key_and_value_lengths_follow_stripe() {
        let at_limit = "k".repeat(MAX_KEY_CHARS);
        assert!(Metadata::parse(map(&[(&at_limit, "v")])).is_ok());
        let too_long = "k".repeat(MAX_KEY_CHARS + 1);
        assert!(Metadata::parse(map(&[(&too_long, "v")])).is_err());
        assert!(Metadata::parse(map(&[("k", &"v".repeat(MAX_VALUE_CHARS))])).is_ok());
        let err = Metadata::parse(map(&[("k", &"v".repeat(MAX_VALUE_CHARS + 1))])).unwrap_err();
        assert_eq!(err.field, "metadata.k");
    }

    #[test]
    fn rejects_reserved_brackets_and_empty() {
        for bad in [
            map(&[("paysync_id", "x")]),
            map(&[("a[b]", "x")]),
            map(&[("", "x")]),
            map(&[("k", "")]),
            map(&[("k", "a\0b")]),
            map(&[("k", "bell\u{7}")]),
        ] {
            assert!(Metadata::parse(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_may_hold_line_breaks_and_tabs() {
        assert!(Metadata::parse(map(&[("note", "line one\nline\ttwo\r\n")])).is_ok());
    }

    #[test]
    fn merge_sets_and_removes_keys_and_checks_the_result() {
        let base = Metadata::parse(map(&[("plan", "pro"), ("seats", "3")])).unwrap();
        let patch: MetadataPatch = [
            ("plan".to_owned(), None),
            ("region".to_owned(), Some("eu".to_owned())),
        ]
        .into();
        let merged = base.merged(&patch).unwrap();
        assert_eq!(merged.as_map(), &map(&[("region", "eu"), ("seats", "3")]));

        let full = Metadata::parse(keys(MAX_USER_KEYS)).unwrap();
        let one_more: MetadataPatch = [("extra".to_owned(), Some("x".to_owned()))].into();
        assert!(full.merged(&one_more).is_err());
        let swap: MetadataPatch = [
            ("k0".to_owned(), None),
            ("extra".to_owned(), Some("x".to_owned())),
        ]
        .into();
        assert_eq!(full.merged(&swap).unwrap().as_map().len(), MAX_USER_KEYS);
    }
}
