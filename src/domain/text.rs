//! Free-text customer fields, bounded by the limits Stripe enforces so that a value accepted
//! locally is never rejected later by Stripe (which would strand the change in dead letters).

use super::ValidationError;

/// Characters no single-line text field may hold: the C0 and C1 control characters (NUL
/// above all, which PostgreSQL cannot store). Published in the OpenAPI document.
pub const SINGLE_LINE_PATTERN: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
/// The same for multi-line text: tab, line feed and carriage return are allowed.
pub const MULTI_LINE_PATTERN: &str = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$";

/// Whether `c` may appear in text; line breaks and tabs only where allowed.
pub fn allowed_char(c: char, allow_line_breaks: bool) -> bool {
    !c.is_control() || (allow_line_breaks && matches!(c, '\n' | '\r' | '\t'))
}

/// Checks one optional text field. The limit counts the value as sent; surrounding whitespace
/// is then trimmed and an empty value means "not set", because Stripe stores an empty string
/// as unset and the two sides must compare equal after a round trip.
fn parse_bounded(
    field: &str,
    raw: &str,
    max_chars: usize,
    allow_line_breaks: bool,
) -> Result<Option<String>, ValidationError> {
    if raw.chars().count() > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if !raw.chars().all(|c| allowed_char(c, allow_line_breaks)) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    let value = raw.trim();
    if value.is_empty() {
        return Ok(None);
    }
    Ok(Some(value.to_owned()))
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, max = $max:expr, line_breaks = $breaks:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            /// `Ok(None)` for a blank value, which clears the field.
            pub fn parse(raw: &str) -> Result<Option<Self>, ValidationError> {
                Ok(parse_bounded($field, raw, Self::MAX_CHARS, $breaks)?.map(Self))
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }
    };
}

bounded_text!(
    /// The customer's full name or business name (Stripe: at most 256 characters).
    Name, field = "name", max = 256, line_breaks = false
);
bounded_text!(
    /// The customer's phone number as the caller wrote it (Stripe: at most 20 characters).
    Phone, field = "phone", max = 20, line_breaks = false
);
bounded_text!(
    /// A free-form note (Stripe: at most 5000 characters; line breaks allowed).
    Description, field = "description", max = 5000, line_breaks = true
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_means_unset_and_values_are_trimmed() {
        assert_eq!(Name::parse("   ").unwrap(), None);
        assert_eq!(Name::parse(" Ada ").unwrap().unwrap().into_inner(), "Ada");
    }

    #[test]
    fn limits_follow_stripe() {
        assert!(Name::parse(&"n".repeat(256)).unwrap().is_some());
        assert_eq!(Name::parse(&"n".repeat(257)).unwrap_err().field, "name");
        assert!(Phone::parse("+44 20 7946 0958").unwrap().is_some());
        assert_eq!(Phone::parse(&"1".repeat(21)).unwrap_err().field, "phone");
        assert_eq!(
            Description::parse(&"d".repeat(5001)).unwrap_err().field,
            "description"
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        assert!(Name::parse(&"é".repeat(256)).unwrap().is_some());
    }

    #[test]
    fn control_characters_are_rejected_except_line_breaks_in_descriptions() {
        assert!(Name::parse("Ada\nLovelace").is_err());
        assert!(Phone::parse("123\u{0}").is_err());
        assert!(Description::parse("line one\nline two").unwrap().is_some());
    }
}
