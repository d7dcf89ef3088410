use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

use super::ValidationError;

/// Stripe caps a customer's `email` at 512 characters.
pub const MAX_EMAIL_CHARS: usize = 512;

/// What paysync accepts as an email address, as a regular expression that the OpenAPI
/// document publishes verbatim (so clients and the server agree on every input): a
/// dot-atom local part (RFC 5322, ASCII), `@`, and a host name of at least two labels (no IP
/// literal, no display name, no surrounding whitespace).
pub const EMAIL_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$";

static EMAIL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(EMAIL_PATTERN).ok());

/// An email address Stripe will accept, at most [`MAX_EMAIL_CHARS`] long and matching
/// [`EMAIL_PATTERN`].
///
/// The case is kept as given because Stripe keeps it; uniqueness among live customers is
/// case-insensitive and enforced by the database (`lower(email)` index).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if raw.is_empty() {
            return Err(ValidationError::new("email", "must not be empty"));
        }
        if raw.chars().count() > MAX_EMAIL_CHARS {
            return Err(ValidationError::new(
                "email",
                format!("must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        let well_formed = EMAIL.as_ref().is_some_and(|pattern| pattern.is_match(raw));
        if !well_formed {
            return Err(ValidationError::new(
                "email",
                "is not a valid address (local@example.com: no spaces, no display name, a \
                 domain with a dot)",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_compiles() {
        assert!(EMAIL.is_some());
    }

    #[test]
    fn accepts_plain_addresses() {
        for good in [
            "Ada.Lovelace+billing@example.co.uk",
            "a@b.co",
            "o'brien@example.com",
            "x@sub-domain.example.com",
        ] {
            assert_eq!(Email::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn rejects_what_stripe_would_reject() {
        for bad in [
            "",
            "   ",
            " ada@example.com",
            "ada@example.com\n",
            "plainaddress",
            "@example.com",
            "user@",
            "user@localhost",
            "user@[127.0.0.1]",
            "Ada <ada@example.com>",
            "two@@example.com",
            "spaces in@example.com",
            "dot.@example.com",
            "a..b@example.com",
            "a@-example.com",
            "a@exa\u{0}mple.com",
            "é@example.com",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?}");
        }
    }

    #[test]
    fn enforces_stripe_length_limit() {
        let local = "a".repeat(64);
        let label = "b".repeat(60);
        let mut domain = String::new();
        while domain.len() < MAX_EMAIL_CHARS {
            domain.push_str(&label);
            domain.push('.');
        }
        domain.push_str("com");
        let too_long = format!("{local}@{domain}");
        assert!(too_long.len() > MAX_EMAIL_CHARS);
        let err = Email::parse(&too_long).unwrap_err();
        assert!(err.message.contains("at most 512"), "{err}");
    }
}
