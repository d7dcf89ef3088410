//! The name of the schema the billing mirror's tables live in (`PAYSYNC_MIRROR_SCHEMA`).

use std::fmt;

/// A schema name paysync may put into SQL as is: lower-case letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (PostgreSQL's identifier limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSchema(String);

impl MirrorSchema {
    pub fn parse(name: &str) -> Result<Self, String> {
        let well_formed = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if well_formed && !name.starts_with("pg_") {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "{name:?} is not a schema name paysync can use: lower-case letters, digits and _, \
                 not starting with a digit or pg_, at most 63 characters"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for MirrorSchema {
    fn default() -> Self {
        Self("stripe".to_owned())
    }
}

impl fmt::Display for MirrorSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_identifiers_are_schema_names() {
        for good in ["stripe", "billing_2", "_x"] {
            assert_eq!(MirrorSchema::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Stripe",
            "2x",
            "a-b",
            "a;drop",
            "pg_catalog",
            &"x".repeat(64),
        ] {
            assert!(MirrorSchema::parse(bad).is_err(), "{bad}");
        }
    }
}
