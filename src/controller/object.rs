//! A SyncPolicy as the cluster holds it. The controller watches policies untyped
//! (`DynamicObject`) and parses each on its own: one object carrying a field this version does
//! not know (written through a newer CRD) or a value it cannot read makes that policy
//! `Invalid`, with the field named in its status and an Event, while every other policy
//! keeps syncing. A typed watch would fail the whole list on that one object.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource as _;
use kube::ResourceExt as _;
use kube::api::{ApiResource, DynamicObject};
use serde_json::Value;

use crate::crd::{
    Adoption, ConflictRules, Deletion, Direction, Mode, RateLimit, ReconcileSettings, SecretRef,
    SyncPolicy, SyncPolicySpec, SyncPolicyStatus, reasons,
};
use crate::policy::{NotReady, PolicyDefinition};

/// The kind's API coordinates, for untyped requests.
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<SyncPolicy>(&())
}

/// The typed policy, or which field does not parse and why (`spec.mood: unknown field …`).
pub fn parse(object: &DynamicObject) -> Result<SyncPolicy, String> {
    let resource = api_resource();
    let mut value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    if let Some(fields) = value.as_object_mut() {
        fields.insert("apiVersion".to_owned(), Value::from(resource.api_version));
        fields.insert("kind".to_owned(), Value::from(resource.kind));
    }
    serde_path_to_error::deserialize::<_, SyncPolicy>(value).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// The name of the Secret a policy references, read without parsing the rest.
pub fn secret_name(object: &DynamicObject) -> Option<&str> {
    object.data["spec"]["stripeSecretRef"]["name"].as_str()
}

/// The definition of a policy whose spec does not parse: in the registry (so the API, the
/// readiness metric and its alert show it) but not ready, reason `Invalid`, syncing nothing
/// (its spec is a suspended placeholder).
pub fn unparseable(name: &str, problem: &str) -> PolicyDefinition {
    let placeholder = SyncPolicySpec {
        stripe_secret_ref: SecretRef {
            name: String::new(),
            api_key_key: "apiKey".to_owned(),
            webhook_secrets_key: "webhookSecrets".to_owned(),
        },
        api_base: String::new(),
        direction: Direction::default(),
        mode: Mode::default(),
        conflict: ConflictRules::default(),
        deletion: Deletion::default(),
        adoption: Adoption::default(),
        reconcile: ReconcileSettings::default(),
        rate_limit: RateLimit::default(),
        suspend: true,
        objects: None,
    };
    PolicyDefinition {
        name: name.to_owned(),
        spec: placeholder,
        credentials: Err(NotReady {
            reason: reasons::INVALID,
            message: format!("the SyncPolicy does not parse: {problem}"),
        }),
    }
}

/// What a status write and an Event need of the object, parsed or not.
#[derive(Debug, Clone)]
pub struct Seen {
    pub name: String,
    pub generation: Option<i64>,
    /// The status as written, if it parses.
    pub status: Option<SyncPolicyStatus>,
    pub reference: ObjectReference,
}

impl Seen {
    pub fn of(object: &DynamicObject) -> Self {
        Self {
            name: object.name_any(),
            generation: object.metadata.generation,
            status: serde_json::from_value(object.data["status"].clone()).ok(),
            reference: object.object_ref(&api_resource()),
        }
    }
}
