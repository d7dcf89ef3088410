//! The fake API server's HTTP side: routes, verbs and their answers.

use std::collections::HashMap;

use bytes::Bytes;
use futures::{StreamExt as _, stream};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::{Change, Connection, Key, ResponseBody, Write, full, streamed};

/// A request's target: `/api/v1/namespaces/<ns>/<plural>[/<name>[/<sub>]]` or
/// `/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/<sub>]]`.
struct Route {
    api_version: String,
    collection: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ((*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let ["namespaces", namespace, plural, rest @ ..] = rest else {
            return None;
        };
        Some(Self {
            collection: format!("{api_version}/{plural}"),
            api_version,
            namespace: (*namespace).to_owned(),
            name: rest.first().map(|s| (*s).to_owned()),
            subresource: rest.get(1).map(|s| (*s).to_owned()),
        })
    }

    fn key(&self, name: &str) -> Key {
        (
            self.collection.clone(),
            self.namespace.clone(),
            name.to_owned(),
        )
    }
}

pub(super) fn handle(
    connection: &Connection,
    parts: &Parts,
    body: &[u8],
) -> Response<ResponseBody> {
    let Some(route) = Route::parse(parts.uri.path()) else {
        return failure(StatusCode::NOT_FOUND, "NotFound", parts.uri.path());
    };
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| {
            url_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    if parts.method != Method::GET {
        connection.api.lock().writes.push(Write {
            client: connection.name.clone(),
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            at: std::time::Instant::now(),
        });
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (&parts.method, route.name.clone()) {
        (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true") => {
            let from = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            watch(connection, &route, from)
        }
        (&Method::GET, None) => list(connection, &route),
        (&Method::GET, Some(name)) => match connection.api.lock().objects.get(&route.key(&name)) {
            Some(object) => full(StatusCode::OK, object),
            None => failure(StatusCode::NOT_FOUND, "NotFound", &name),
        },
        (&Method::POST, None) => create(connection, &route, body),
        (&Method::PUT, Some(name)) => replace(connection, &route, &name, body),
        (&Method::PATCH, Some(name)) => {
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if content_type.contains("json-patch") {
                return failure(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    content_type,
                );
            }
            patch(connection, &route, &name, &body)
        }
        (&Method::DELETE, Some(name)) => {
            let mut state = connection.api.lock();
            match state.delete(&route.key(&name), &connection.name) {
                Some(object) => full(StatusCode::OK, &object),
                None => failure(StatusCode::NOT_FOUND, "NotFound", &name),
            }
        }
        _ => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            parts.uri.path(),
        ),
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",")))
        .collect()
}

fn list(connection: &Connection, route: &Route) -> Response<ResponseBody> {
    let state = connection.api.lock();
    let items: Vec<&Value> = state
        .objects
        .iter()
        .filter(|((c, ns, _), _)| *c == route.collection && *ns == route.namespace)
        .map(|(_, object)| object)
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "apiVersion": route.api_version,
            "kind": "List",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        }),
    )
}

/// The changes after `from`, then every new one, as newline-delimited watch events.
fn watch(connection: &Connection, route: &Route, from: u64) -> Response<ResponseBody> {
    let state = connection.api.lock();
    let live = state.changes.subscribe();
    let (collection, namespace) = (route.collection.clone(), route.namespace.clone());
    let wanted = move |c: &Change| c.collection == collection && c.namespace == namespace;
    let past: Vec<Change> = state
        .history
        .iter()
        .filter(|c| c.version > from && wanted(c))
        .cloned()
        .collect();
    let last = state.version;
    drop(state);
    let live = stream::unfold(live, |mut live| async move {
        loop {
            match live.recv().await {
                Ok(change) => return Some((change, live)),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |c| std::future::ready(c.version > last && wanted(c)));
    let lines = stream::iter(past).chain(live).map(|change| {
        let mut line = serde_json::to_vec(&json!({"type": change.kind, "object": change.object}))
            .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    });
    streamed(lines.boxed())
}

fn create(connection: &Connection, route: &Route, object: Value) -> Response<ResponseBody> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let key = route.key(&name);
    let mut state = connection.api.lock();
    if state.objects.contains_key(&key) {
        return failure(StatusCode::CONFLICT, "AlreadyExists", &name);
    }
    let stored = state.store(key, object, &connection.name);
    full(StatusCode::CREATED, &stored)
}

/// Replaces an object (PUT); its `metadata.resourceVersion`, when given, must be the current
/// one (409 otherwise), as leader election relies on.
fn replace(
    connection: &Connection,
    route: &Route,
    name: &str,
    object: Value,
) -> Response<ResponseBody> {
    let key = route.key(name);
    let mut state = connection.api.lock();
    let Some(current) = state.objects.get(&key).cloned() else {
        return failure(StatusCode::NOT_FOUND, "NotFound", name);
    };
    let expected = &object["metadata"]["resourceVersion"];
    if !expected.is_null() && *expected != current["metadata"]["resourceVersion"] {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    let stored = state.store(key, object, &connection.name);
    full(StatusCode::OK, &stored)
}

/// Merge patch, strategic merge and server-side apply, all as a JSON merge patch (RFC 7386);
/// a `metadata.resourceVersion` in the patch is a precondition. The main resource ignores
/// `status`; the `/status` subresource takes only `status`.
fn patch(
    connection: &Connection,
    route: &Route,
    name: &str,
    patch: &Value,
) -> Response<ResponseBody> {
    let key = route.key(name);
    let mut state = connection.api.lock();
    let Some(current) = state.objects.get(&key).cloned() else {
        return failure(StatusCode::NOT_FOUND, "NotFound", name);
    };
    let expected = &patch["metadata"]["resourceVersion"];
    if !expected.is_null() && *expected != current["metadata"]["resourceVersion"] {
        return failure(
            StatusCode::CONFLICT,
            "Conflict",
            "the object has been modified",
        );
    }
    let mut next = current.clone();
    if route.subresource.as_deref() == Some("status") && state.failing_status_writes > 0 {
        state.failing_status_writes -= 1;
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcd timed out",
        );
    }
    if route.subresource.as_deref() == Some("status") {
        merge(&mut next["status"], &patch["status"]);
    } else {
        let mut patch = patch.clone();
        if let Some(patch) = patch.as_object_mut() {
            patch.remove("status");
        }
        merge(&mut next, &patch);
    }
    let stored = state.store(key, next, &connection.name);
    full(StatusCode::OK, &stored)
}

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(target) = target else {
        return;
    };
    for (field, value) in patch {
        if value.is_null() {
            target.remove(field);
        } else {
            merge(target.entry(field.clone()).or_insert(Value::Null), value);
        }
    }
}

fn failure(status: StatusCode, reason: &str, message: &str) -> Response<ResponseBody> {
    full(
        status,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status.as_u16(),
        }),
    )
}
