use std::fmt;

use email_address::{EmailAddress, Options};

use super::ValidationError;

/// Stripe caps a customer's `email` at 512 characters.
pub const MAX_EMAIL_CHARS: usize = 512;

/// An email address Stripe will accept: a bare `local@domain.tld` (no display name, no IP
/// literal, at least one dot in the domain), at most [`MAX_EMAIL_CHARS`] long.
///
/// The case is kept as given because Stripe keeps it; uniqueness among live customers is
/// case-insensitive and enforced by the database (`lower(email)` index).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let candidate = raw.trim();
        if candidate.is_empty() {
            return Err(ValidationError::new("email", "must not be empty"));
        }
        if candidate.chars().count() > MAX_EMAIL_CHARS {
            return Err(ValidationError::new(
                "email",
                format!("must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        let options = Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_minimum_sub_domains(2);
        EmailAddress::parse_with_options(candidate, options)
            .map_err(|e| ValidationError::new("email", format!("is not a valid address ({e})")))?;
        Ok(Self(candidate.to_owned()))
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
    fn accepts_plain_addresses_and_trims_whitespace() {
        let email = Email::parse("  Ada.Lovelace+billing@example.co.uk ").unwrap();
        assert_eq!(email.as_str(), "Ada.Lovelace+billing@example.co.uk");
    }

    #[test]
    fn rejects_what_stripe_would_reject() {
        for bad in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "user@",
            "user@localhost",
            "user@[127.0.0.1]",
            "Ada <ada@example.com>",
            "two@@example.com",
            "spaces in@example.com",
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
