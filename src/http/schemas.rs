//! OpenAPI schemas of the customer fields, built from the domain's own limits and patterns so
//! the document says exactly what the server accepts (a fuzzer checks both directions: every
//! input the document allows is accepted, every input it forbids is refused).

use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, SchemaType, Type};

use crate::domain::{
    Description, EMAIL_PATTERN, MAX_EMAIL_CHARS, MAX_USER_KEYS, MULTI_LINE_PATTERN, Name, Phone,
    SINGLE_LINE_PATTERN, metadata,
};

/// A metadata key: 1 to 40 characters, no control characters or square brackets, not
/// starting with the reserved `paysync_`.
pub const METADATA_KEY_PATTERN: &str = r"^(?!paysync_)[^\[\]\x00-\x1f\x7f-\x9f]+$";

fn text(nullable: bool) -> ObjectBuilder {
    if nullable {
        ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    } else {
        ObjectBuilder::new().schema_type(Type::String)
    }
}

/// `email`: required where present, never null.
pub fn email() -> Object {
    text(false)
        .max_length(Some(MAX_EMAIL_CHARS))
        .pattern(Some(EMAIL_PATTERN))
        .description(Some(
            "Unique among live customers, case-insensitively. ASCII `local@domain.tld`: a \
             dot-atom local part, a domain with at least one dot.",
        ))
        .examples(["ada@example.com"])
        .build()
}

/// A policy (Stripe account) name: a DNS label, as Kubernetes names are.
pub const ACCOUNT_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// `account`: the SyncPolicy a customer syncs with.
pub fn account() -> Object {
    text(false)
        .max_length(Some(63))
        .pattern(Some(ACCOUNT_PATTERN))
        .description(Some(
            "The SyncPolicy (Stripe account) the customer syncs with. Chosen at creation \
             (default: `default`, or the only policy) and never changed.",
        ))
        .examples(["default"])
        .build()
}

fn bounded(max: usize, pattern: &str, description: &str) -> Object {
    text(true)
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .build()
}

/// `name`; `null` or blank clears it.
pub fn name() -> Object {
    bounded(
        Name::MAX_CHARS,
        SINGLE_LINE_PATTERN,
        "At most 256 characters, no control characters; trimmed; blank or null clears it.",
    )
}

/// `phone`; `null` or blank clears it.
pub fn phone() -> Object {
    bounded(
        Phone::MAX_CHARS,
        SINGLE_LINE_PATTERN,
        "At most 20 characters, no control characters; trimmed; blank or null clears it.",
    )
}

/// `description`; `null` or blank clears it.
pub fn description() -> Object {
    bounded(
        Description::MAX_CHARS,
        MULTI_LINE_PATTERN,
        "At most 5000 characters; line breaks and tabs allowed, other control characters \
         not; trimmed; blank or null clears it.",
    )
}

fn metadata_key() -> Object {
    text(false)
        .min_length(Some(1))
        .max_length(Some(metadata::MAX_KEY_CHARS))
        .pattern(Some(METADATA_KEY_PATTERN))
        .build()
}

fn metadata_value(nullable: bool) -> Object {
    text(nullable)
        .min_length(Some(1))
        .max_length(Some(metadata::MAX_VALUE_CHARS))
        .pattern(Some(MULTI_LINE_PATTERN))
        .build()
}

/// `metadata` of a new customer.
pub fn metadata() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_USER_KEYS))
        .property_names(Some(metadata_key()))
        .additional_properties(Some(AdditionalProperties::RefOr(
            metadata_value(false).into(),
        )))
        .description(Some(
            "At most 48 keys (Stripe allows 50; paysync uses 2). Keys: 1–40 characters, no \
             square brackets or control characters, the `paysync_` prefix reserved. Values: \
             1–500 characters, no control characters but line breaks and tabs.",
        ))
        .build()
}

/// `metadata` of a merge patch: a value sets a key, `null` removes it, `null` for the whole
/// object removes every key.
pub fn metadata_patch() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(MAX_USER_KEYS))
        .property_names(Some(metadata_key()))
        .additional_properties(Some(AdditionalProperties::RefOr(
            metadata_value(true).into(),
        )))
        .description(Some(
            "Keys merged one by one: a value sets the key, null removes it; at most 48 keys \
             per patch. Keys and values as on create. A result over 48 keys is refused (409).",
        ))
        .build()
}
