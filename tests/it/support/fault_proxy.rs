//! A fault-injecting HTTP proxy in front of localstripe, on 127.0.0.1: it forwards requests
//! and, by plan, answers 5xx or 429 instead, loses the response after forwarding, stalls,
//! holds a request before forwarding it (and forwards it even after its sender is gone, as a
//! network or a proxy does), or rejects requests whose body contains a marker (as Stripe
//! rejects invalid input). Faults come from a repeating plan, from one-shot faults aimed at
//! the next request that matches, or at random (the chaos test).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Mutex;

use super::stripe::LOCALSTRIPE;

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status without forwarding (Stripe did nothing).
    Status(u16),
    /// 429 with `Retry-After: seconds`, without forwarding.
    RateLimited { retry_after_secs: u64 },
    /// Forward, then answer 500 (Stripe applied it; the client cannot know).
    StatusAfterForward(u16),
    /// Forward, then cut the response short (a reset mid-response).
    DropAfterForward,
    /// Forward, then hold the response this long (longer than the client's timeout).
    Stall(Duration),
    /// Hold the request this long, then forward it whether or not its sender still waits
    /// (a request stalled on the way that outlives its sender), then answer if anyone listens.
    HoldThenForward(Duration),
}

/// Which requests a one-shot fault is aimed at.
#[derive(Debug, Clone)]
pub struct Aim {
    pub method: &'static str,
    /// The path and query start with this (e.g. `/v1/customers/cus_`, `/v1/customers?`).
    pub path_prefix: String,
    /// The form body contains this, if set.
    pub body_contains: Option<String>,
    /// The path and query do not contain this, if set.
    pub excludes: Option<String>,
}

impl Aim {
    pub fn new(method: &'static str, path_prefix: &str) -> Self {
        Self {
            method,
            path_prefix: path_prefix.to_owned(),
            body_contains: None,
            excludes: None,
        }
    }

    #[must_use]
    pub fn excluding(mut self, text: &str) -> Self {
        self.excludes = Some(text.to_owned());
        self
    }

    #[must_use]
    pub fn with_body(mut self, contains: &str) -> Self {
        self.body_contains = Some(contains.to_owned());
        self
    }

    fn matches(&self, method: &str, path: &str, body: &[u8]) -> bool {
        method == self.method
            && path.starts_with(&self.path_prefix)
            && self
                .excludes
                .as_deref()
                .is_none_or(|text| !path.contains(text))
            && self
                .body_contains
                .as_deref()
                .is_none_or(|wanted| String::from_utf8_lossy(body).contains(wanted))
    }
}

/// Faults drawn at random for each request (probabilities, 0 to 1).
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// 500 without forwarding.
    pub status: f64,
    /// Forward, then 500 (applied, the client cannot know).
    pub status_after_forward: f64,
    /// 429 with `Retry-After: 1`.
    pub rate_limited: f64,
    /// Held before forwarding for a time drawn from `hold`.
    pub hold: f64,
    pub hold_range: (Duration, Duration),
}

/// Faults injected so far, by kind (chaos and aimed ones).
#[derive(Debug, Default, Clone, Copy)]
pub struct Injected {
    pub status: u64,
    pub status_after_forward: u64,
    pub rate_limited: u64,
    pub held: u64,
    /// Held requests that have since reached Stripe (their senders may be gone).
    pub held_landed: u64,
}

struct ProxyState {
    upstream: reqwest::Client,
    /// Where requests are forwarded: the shared localstripe, or a private one.
    upstream_base: String,
    /// Faults for requests in turn: request n gets `plan[n % plan.len()]` when `Some`.
    plan: Mutex<Vec<Option<Fault>>>,
    /// One-shot faults, each for the next request it is aimed at (before the plan).
    aimed: Mutex<Vec<(Aim, Fault)>>,
    chaos: Mutex<Option<Chaos>>,
    injected: std::sync::Mutex<Injected>,
    /// A body marker answered with 400 for as long as it is set.
    reject_marker: Mutex<Option<String>>,
    requests: AtomicU64,
    /// Every request with when it arrived and when its answer came back from upstream.
    log: Mutex<Vec<Recorded>>,
    /// Added to every forwarded request, as Stripe's own processing time (localstripe answers
    /// in a few ms; Stripe in hundreds).
    latency: Mutex<Duration>,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: String,
    pub arrived: Instant,
    pub answered: Instant,
}

pub struct FaultProxy {
    pub base_url: String,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    /// In front of the shared localstripe.
    pub async fn start() -> Self {
        Self::start_to(LOCALSTRIPE).await
    }

    /// In front of the Stripe at `upstream_base` (a private localstripe, say).
    pub async fn start_to(upstream_base: &str) -> Self {
        let state = Arc::new(ProxyState {
            upstream: reqwest::Client::new(),
            upstream_base: upstream_base.to_owned(),
            plan: Mutex::new(Vec::new()),
            aimed: Mutex::new(Vec::new()),
            chaos: Mutex::new(None),
            injected: std::sync::Mutex::new(Injected::default()),
            reject_marker: Mutex::new(None),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            latency: Mutex::new(Duration::ZERO),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base_url, state }
    }

    /// Repeats `plan` over the following requests (`None` = forward untouched).
    pub async fn set_plan(&self, plan: Vec<Option<Fault>>) {
        *self.state.plan.lock().await = plan;
    }

    /// The next request `aim` matches gets `fault` (once).
    pub async fn aim(&self, aim: Aim, fault: Fault) {
        self.state.aimed.lock().await.push((aim, fault));
    }

    /// Draws a fault at random for every request (`None`: no more chaos).
    pub async fn set_chaos(&self, chaos: Option<Chaos>) {
        *self.state.chaos.lock().await = chaos;
    }

    pub fn injected(&self) -> Injected {
        *self.state.injected.lock().unwrap()
    }

    /// Makes every forwarded request take `latency` longer, as real Stripe does.
    pub async fn set_latency(&self, latency: Duration) {
        *self.state.latency.lock().await = latency;
    }

    pub async fn reject_bodies_containing(&self, marker: Option<&str>) {
        *self.state.reject_marker.lock().await = marker.map(str::to_owned);
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub async fn recorded(&self) -> Vec<Recorded> {
        self.state.log.lock().await.clone()
    }
}

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let arrived = Instant::now();
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();

    if let Some(marker) = state.reject_marker.lock().await.as_deref()
        && String::from_utf8_lossy(&body).contains(marker)
    {
        let error = serde_json::json!({"error": {"type": "invalid_request_error", "message": "Invalid email address"}});
        return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
    }
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let fault = choose_fault(&state, n, parts.method.as_str(), &target, &body).await;
    count(&state, fault.as_ref());
    match fault {
        Some(Fault::HoldThenForward(pause)) => {
            // Spawned: it forwards even when this handler is dropped (its client gone).
            let state = state.clone();
            let held = tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                let answer = forward_upstream(&state, parts, body, arrived).await;
                state.injected.lock().unwrap().held_landed += 1;
                answer
            });
            return match held.await {
                Ok(Some((status, bytes))) => json_response(status, bytes),
                _ => status_response(502),
            };
        }
        Some(Fault::Status(code)) => return status_response(code),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = status_response(429);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return response;
        }
        _ => {}
    }

    let Some((status, bytes)) = forward_upstream(&state, parts, body, arrived).await else {
        return status_response(502);
    };
    match fault {
        Some(Fault::StatusAfterForward(code)) => status_response(code),
        Some(Fault::DropAfterForward) => {
            // Declares more bytes than it sends: the client sees the connection cut mid-body.
            let mut response = Response::new(Body::from(bytes.slice(..bytes.len().min(5))));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len() + 100));
            response
        }
        Some(Fault::Stall(pause)) => {
            tokio::time::sleep(pause).await;
            json_response(status, bytes)
        }
        _ => json_response(status, bytes),
    }
}

/// The fault for request `n`: an aimed one it matches, else the plan's, else chaos's.
async fn choose_fault(
    state: &ProxyState,
    n: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<Fault> {
    {
        let mut aimed = state.aimed.lock().await;
        if let Some(index) = aimed
            .iter()
            .position(|(aim, _)| aim.matches(method, path, body))
        {
            return Some(aimed.remove(index).1);
        }
    }
    {
        let plan = state.plan.lock().await;
        if !plan.is_empty() {
            return plan[(n as usize) % plan.len()].clone();
        }
    }
    let chaos = (*state.chaos.lock().await)?;
    let draw: f64 = rand::random();
    let mut threshold = chaos.status;
    if draw < threshold {
        return Some(Fault::Status(500));
    }
    threshold += chaos.status_after_forward;
    if draw < threshold {
        return Some(Fault::StatusAfterForward(500));
    }
    threshold += chaos.rate_limited;
    if draw < threshold {
        return Some(Fault::RateLimited {
            retry_after_secs: 1,
        });
    }
    threshold += chaos.hold;
    if draw < threshold {
        let (low, high) = chaos.hold_range;
        let pause = low + (high.saturating_sub(low)).mul_f64(rand::random::<f64>());
        return Some(Fault::HoldThenForward(pause));
    }
    None
}

fn count(state: &ProxyState, fault: Option<&Fault>) {
    let mut injected = state.injected.lock().unwrap();
    match fault {
        Some(Fault::Status(_)) => injected.status += 1,
        Some(Fault::StatusAfterForward(_)) => injected.status_after_forward += 1,
        Some(Fault::RateLimited { .. }) => injected.rate_limited += 1,
        Some(Fault::HoldThenForward(_)) => injected.held += 1,
        _ => {}
    }
}

/// Forwards the request upstream (after the configured latency) and logs it; its answer, or
/// `None` when upstream could not be reached.
async fn forward_upstream(
    state: &ProxyState,
    parts: axum::http::request::Parts,
    body: Bytes,
    arrived: Instant,
) -> Option<(StatusCode, Bytes)> {
    let latency = *state.latency.lock().await;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let url = format!(
        "{}{}",
        state.upstream_base,
        parts.uri.path_and_query().map_or("", |p| p.as_str())
    );
    let logged_body = body.clone();
    let mut upstream = state.upstream.request(parts.method.clone(), url).body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.ok()?;
    let status = answer.status();
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    state.log.lock().await.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        body: String::from_utf8_lossy(&logged_body).into_owned(),
        arrived,
        answered: Instant::now(),
    });
    Some((status, bytes))
}

fn json_response(status: StatusCode, bytes: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn status_response(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap();
    let error =
        serde_json::json!({"error": {"type": "api_error", "message": format!("injected {code}")}});
    (status, axum::Json(error)).into_response()
}
