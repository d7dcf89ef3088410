//! The exact requests the controller's writes make, pinned against a mocked API server
//! (`tower_test`): the status subresource by server-side apply as field manager `paysync`,
//! and the legacy finalizer's removal guarded by the `resourceVersion` read.

use http::{Request, Response};
use kube::api::DynamicObject;
use kube::client::Body;
use kube::{Api, Client};
use serde_json::{Value, json};
use tower_test::mock;

use super::reconcile::{apply_status, remove_legacy_finalizer};
use super::{LEGACY_FINALIZER, status};
use crate::crd::{CustomerCounts, SyncPolicy, SyncPolicySpec};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn policy(finalizers: &[&str]) -> SyncPolicy {
    let spec: SyncPolicySpec =
        serde_json::from_value(json!({"stripeSecretRef": {"name": "stripe-a"}})).unwrap();
    let mut policy = SyncPolicy::new("a", spec);
    policy.metadata.namespace = Some("payments".to_owned());
    policy.metadata.resource_version = Some("42".to_owned());
    policy.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
    policy
}

fn api() -> (Api<DynamicObject>, Handle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "payments");
    (
        Api::namespaced_with(client, "payments", &super::api_resource()),
        handle,
    )
}

/// Answers the next request with `policy`, and returns the request with its JSON body.
async fn answer(mut handle: Handle, policy: &SyncPolicy) -> (http::request::Parts, Value) {
    let (request, send) = handle.next_request().await.expect("a request");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    let response = serde_json::to_vec(policy).unwrap();
    send.send_response(Response::builder().body(Body::from(response)).unwrap());
    (parts, body)
}

#[tokio::test]
async fn status_is_server_side_applied_to_the_subresource_as_paysync() {
    let (api, handle) = api();
    let object = policy(&[]);
    let readiness = status::not_in_registry();
    let observed = status::Observed {
        generation: Some(2),
        readiness: &readiness,
        customers: Some(CustomerCounts::default()),
        last_run: None,
        database_error: None,
    };
    let new = status::desired(None, &observed, k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let server = tokio::spawn(async move { answer(handle, &object).await });
    apply_status(&api, "a", &new).await.unwrap();
    let (parts, body) = server.await.unwrap();
    assert_eq!(parts.method, http::Method::PATCH);
    assert_eq!(
        parts.uri.path(),
        "/apis/paysync.dev/v1alpha1/namespaces/payments/syncpolicies/a/status"
    );
    let query = parts.uri.query().unwrap_or_default();
    assert!(query.contains("fieldManager=paysync"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    assert_eq!(
        parts.headers[http::header::CONTENT_TYPE],
        "application/apply-patch+yaml"
    );
    assert_eq!(body["apiVersion"], "paysync.dev/v1alpha1");
    assert_eq!(body["kind"], "SyncPolicy");
    assert_eq!(body["status"]["observedGeneration"], 2);
    assert!(
        body.get("spec").is_none(),
        "a status write claims no spec field"
    );
}

#[tokio::test]
async fn removing_the_legacy_finalizer_keeps_the_others_guarded_by_the_resource_version() {
    let (api, handle) = api();
    let object = policy(&[LEGACY_FINALIZER, "other.example/keep"]);
    let answered = object.clone();
    let server = tokio::spawn(async move { answer(handle, &answered).await });
    remove_legacy_finalizer(&api, &object.metadata)
        .await
        .unwrap();
    let (parts, body) = server.await.unwrap();
    assert_eq!(parts.method, http::Method::PATCH);
    assert_eq!(
        parts.uri.path(),
        "/apis/paysync.dev/v1alpha1/namespaces/payments/syncpolicies/a"
    );
    assert_eq!(
        parts.headers[http::header::CONTENT_TYPE],
        "application/merge-patch+json"
    );
    assert_eq!(
        body["metadata"],
        json!({"finalizers": ["other.example/keep"], "resourceVersion": "42"})
    );
}
