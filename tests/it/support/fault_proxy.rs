//! A fault-injecting HTTP proxy in front of localstripe, on 127.0.0.1: it forwards requests
//! and, by plan, answers 5xx or 429 instead, loses the response after forwarding, stalls, or
//! rejects requests whose body contains a marker (as Stripe rejects invalid input).

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
}

struct ProxyState {
    upstream: reqwest::Client,
    /// Where requests are forwarded: the shared localstripe, or a private one.
    upstream_base: String,
    /// Faults for requests in turn: request n gets `plan[n % plan.len()]` when `Some`.
    plan: Mutex<Vec<Option<Fault>>>,
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
    let fault = {
        let plan = state.plan.lock().await;
        if plan.is_empty() {
            None
        } else {
            plan[(n as usize) % plan.len()].clone()
        }
    };
    match fault {
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
    let Ok(answer) = upstream.send().await else {
        return status_response(502);
    };
    let status = answer.status();
    let bytes: Bytes = answer.bytes().await.unwrap_or_default();
    state.log.lock().await.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        body: String::from_utf8_lossy(&logged_body).into_owned(),
        arrived,
        answered: Instant::now(),
    });
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
            (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
        _ => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
    }
}

fn status_response(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap();
    let error =
        serde_json::json!({"error": {"type": "api_error", "message": format!("injected {code}")}});
    (status, axum::Json(error)).into_response()
}
