//! An in-memory Kubernetes API server, for testing the controller without a cluster (none can
//! run on these machines: SERVICES.md). A `tower::Service` handed to `kube::Client::new`; it
//! keeps objects by collection, namespace and name, and implements what the controller and
//! kube-runtime use: list; `watch=true` (newline-delimited watch events, resumed from a
//! `resourceVersion`); get; create; replace and merge patches (409 on a stale
//! `resourceVersion`); server-side apply treated as a merge; the `/status` subresource
//! (status changes never bump `generation`, spec changes do); replace (PUT, for Leases);
//! requests that hang for one client (`stall`); `deletionTimestamp` and
//! finalizers (delete only marks while finalizers remain); Events. As the real server does,
//! a write that changes nothing emits no watch event and keeps the `resourceVersion`.
//! Each client is named, and every write is logged with its writer's name.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt as _, stream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Where an object lives: its collection (`<group>/<version>/<plural>`), namespace and name.
type Key = (String, String, String);

/// A change, as a watch reports it.
#[derive(Clone, Debug)]
struct Change {
    version: u64,
    collection: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// A write a client made.
#[derive(Clone, Debug)]
pub struct Write {
    pub client: String,
    pub method: Method,
    pub path: String,
    /// When the server received it.
    pub at: std::time::Instant,
}

struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    writes: Vec<Write>,
    changes: broadcast::Sender<Change>,
    /// Status writes still to refuse with 500 (an API server having trouble).
    failing_status_writes: usize,
    /// (client, path part): requests of that client to such a path never get an answer (a
    /// connection that hangs), and never reach the server.
    stalled: Vec<(String, String)>,
    /// (path part, status): every request to such a path is refused with the status (404: a
    /// CRD not installed; 403: RBAC refusing).
    refused: Vec<(String, u16)>,
}

/// The server; clone it to share.
#[derive(Clone)]
pub struct KubeApi {
    state: Arc<Mutex<State>>,
}

/// One client's connection to the server.
#[derive(Clone)]
pub struct Connection {
    api: KubeApi,
    name: String,
}

impl Default for KubeApi {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                version: 0,
                objects: BTreeMap::new(),
                history: Vec::new(),
                writes: Vec::new(),
                changes: broadcast::channel(4096).0,
                failing_status_writes: 0,
                stalled: Vec::new(),
                refused: Vec::new(),
            })),
        }
    }
}

impl KubeApi {
    /// A client of this server; `name` marks its writes.
    pub fn client(&self, name: &str) -> kube::Client {
        let connection = Connection {
            api: self.clone(),
            name: name.to_owned(),
        };
        kube::Client::new(connection, "payments")
    }

    /// Creates or replaces an object as `kubectl apply` would (the spec, data, metadata
    /// labels; status stays the server's).
    pub fn apply(&self, object: Value) {
        let (key, _) = key_of(&object);
        let mut state = self.lock();
        let next = match state.objects.get(&key) {
            None => object,
            Some(current) => {
                let mut next = current.clone();
                for field in ["spec", "data", "stringData"] {
                    if let Some(value) = object.get(field) {
                        next[field] = value.clone();
                    }
                }
                next
            }
        };
        state.store(key, next, "kubectl");
    }

    /// Deletes an object as `kubectl delete` would.
    pub fn delete(&self, collection: &str, name: &str) {
        let key = (
            collection.to_owned(),
            "payments".to_owned(),
            name.to_owned(),
        );
        let mut state = self.lock();
        state.delete(&key, "kubectl");
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let key = (
            collection.to_owned(),
            "payments".to_owned(),
            name.to_owned(),
        );
        self.lock().objects.get(&key).cloned()
    }

    /// Every object of a collection (Events: `events.k8s.io/v1/events`).
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((c, _, _), _)| c == collection)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Refuses the next `count` status writes with 500.
    pub fn fail_status_writes(&self, count: usize) {
        self.lock().failing_status_writes = count;
    }

    /// From now on, requests of `client` whose path contains `path_part` (e.g. `/leases`)
    /// hang without an answer.
    pub fn stall(&self, client: &str, path_part: &str) {
        self.lock()
            .stalled
            .push((client.to_owned(), path_part.to_owned()));
    }

    /// Refuses every request whose path contains `path_part` with `status`, until
    /// [`Self::accept`].
    pub fn refuse(&self, path_part: &str, status: u16) {
        self.lock().refused.push((path_part.to_owned(), status));
    }

    /// Ends every [`Self::refuse`].
    pub fn accept(&self) {
        self.lock().refused.clear();
    }

    /// Every write by clients so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key_of(object: &Value) -> (Key, &'static str) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (collection, kind) = match object["kind"].as_str().unwrap_or_default() {
        "Secret" => ("v1/secrets".to_owned(), "Secret"),
        "SyncPolicy" => (format!("{api_version}/syncpolicies"), "SyncPolicy"),
        other => panic!("the fake API does not keep {other}"),
    };
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("payments");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    ((collection, namespace.to_owned(), name.to_owned()), kind)
}

impl State {
    /// Stores `next` under `key` unless it changes nothing; bumps the version, the
    /// generation when the spec changed, and records the watch event.
    fn store(&mut self, key: Key, mut next: Value, writer: &str) -> Value {
        let current = self.objects.get(&key).cloned();
        let meta = |v: &Value, f: &str| v["metadata"][f].clone();
        if let Some(current) = &current {
            for field in ["resourceVersion", "uid", "creationTimestamp", "generation"] {
                next["metadata"][field] = meta(current, field);
            }
            if *current == next {
                return next;
            }
            if current.get("spec") != next.get("spec") {
                let generation = meta(current, "generation").as_i64().unwrap_or(1);
                next["metadata"]["generation"] = json!(generation + 1);
            }
        } else {
            next["metadata"]["namespace"] = json!(key.1);
            next["metadata"]["uid"] = json!(format!("uid-{}", self.version + 1));
            next["metadata"]["creationTimestamp"] = json!("2026-11-29T00:00:00Z");
            if next.get("spec").is_some() {
                next["metadata"]["generation"] = json!(1);
            }
        }
        let deleting = next["metadata"].get("deletionTimestamp").is_some();
        let finalizers = next["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.objects.insert(key.clone(), next);
            self.delete(&key, writer);
            return json!({});
        }
        self.version += 1;
        next["metadata"]["resourceVersion"] = json!(self.version.to_string());
        let kind = if current.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(&key, kind, next.clone());
        self.objects.insert(key, next.clone());
        next
    }

    fn delete(&mut self, key: &Key, writer: &str) -> Option<Value> {
        let mut object = self.objects.get(key).cloned()?;
        let has_finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if object["metadata"].get("deletionTimestamp").is_none() {
                object["metadata"]["deletionTimestamp"] = json!("2026-11-29T01:00:00Z");
                return Some(self.store(key.clone(), object, writer));
            }
            return Some(object);
        }
        self.objects.remove(key);
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.record(key, "DELETED", object.clone());
        Some(object)
    }

    fn record(&mut self, key: &Key, kind: &'static str, object: Value) {
        let change = Change {
            version: self.version,
            collection: key.0.clone(),
            namespace: key.1.clone(),
            kind,
            object,
        };
        drop(self.changes.send(change.clone()));
        self.history.push(change);
    }
}

#[path = "kube_api/serve.rs"]
mod serve;

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let connection = self.clone();
        Box::pin(async move {
            let stalled = connection.api.lock().stalled.iter().any(|(client, part)| {
                *client == connection.name && request.uri().path().contains(part.as_str())
            });
            if stalled {
                std::future::pending::<()>().await;
            }
            let refused = connection
                .api
                .lock()
                .refused
                .iter()
                .find_map(|(part, status)| {
                    request
                        .uri()
                        .path()
                        .contains(part.as_str())
                        .then_some(*status)
                });
            if let Some(status) = refused {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                let reason = if status == 404 {
                    "NotFound"
                } else {
                    "Forbidden"
                };
                return Ok(full(
                    code,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": format!("refused by the test: {reason}"), "reason": reason, "code": status}),
                ));
            }
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            Ok(serve::handle(&connection, &parts, &body))
        })
    }
}

fn full(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed_unsync())
        .unwrap_or_default()
}

fn streamed(lines: stream::BoxStream<'static, Bytes>) -> Response<ResponseBody> {
    let frames = lines.map(|line| Ok(hyper::body::Frame::data(line)));
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap_or_default()
}
