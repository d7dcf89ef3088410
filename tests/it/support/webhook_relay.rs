//! Stripe's side of webhook delivery, for tests where paysync's replicas come and go:
//! localstripe delivers each event once, to one URL; this relay takes it (answering at once),
//! then delivers it to a live replica, round robin, retrying until one answers 2xx, as Stripe
//! retries an endpoint for days. A delivery to a replica killed mid-request is retried.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::sync::{Mutex, Notify};

/// A delivery as localstripe made it: its signature header and raw body.
struct Delivery {
    signature: String,
    body: Bytes,
}

struct RelayState {
    queue: Mutex<VecDeque<Delivery>>,
    arrived: Notify,
    /// Where deliveries go: the replicas' webhook URLs, changed as they restart.
    targets: std::sync::Mutex<Vec<String>>,
    next: AtomicUsize,
    /// Deliveries taken and not yet answered 2xx by a replica.
    pending: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    http: reqwest::Client,
}

pub struct WebhookRelay {
    /// Register this URL in localstripe.
    pub url: String,
    state: Arc<RelayState>,
}

/// Forwarders delivering at once (Stripe delivers concurrently, in no particular order).
const FORWARDERS: usize = 4;

impl WebhookRelay {
    pub async fn start() -> Self {
        let state = Arc::new(RelayState {
            queue: Mutex::new(VecDeque::new()),
            arrived: Notify::new(),
            targets: std::sync::Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            pending: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        });
        let app = axum::Router::new().fallback(take).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stripe", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        for _ in 0..FORWARDERS {
            tokio::spawn(forward(state.clone()));
        }
        Self { url, state }
    }

    /// The webhook URLs deliveries go to from now on.
    pub fn set_targets(&self, targets: Vec<String>) {
        *self.state.targets.lock().unwrap() = targets;
    }

    /// Deliveries not yet accepted by a replica.
    pub fn pending(&self) -> u64 {
        self.state.pending.load(Ordering::SeqCst)
    }

    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::SeqCst)
    }

    pub fn retried(&self) -> u64 {
        self.state.retried.load(Ordering::SeqCst)
    }
}

async fn take(State(state): State<Arc<RelayState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    state.pending.fetch_add(1, Ordering::SeqCst);
    state
        .queue
        .lock()
        .await
        .push_back(Delivery { signature, body });
    state.arrived.notify_one();
    StatusCode::OK
}

/// Delivers queued events until the test ends, each until a replica accepts it.
async fn forward(state: Arc<RelayState>) {
    loop {
        let next = state.queue.lock().await.pop_front();
        let Some(delivery) = next else {
            state.arrived.notified().await;
            continue;
        };
        let mut attempt = 0u32;
        loop {
            let target = {
                let targets = state.targets.lock().unwrap();
                (!targets.is_empty()).then(|| {
                    targets[state.next.fetch_add(1, Ordering::SeqCst) % targets.len()].clone()
                })
            };
            let accepted = match target {
                Some(target) => state
                    .http
                    .post(target)
                    .header("content-type", "application/json")
                    .header("stripe-signature", &delivery.signature)
                    .body(delivery.body.clone())
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success()),
                None => false,
            };
            if accepted {
                break;
            }
            attempt += 1;
            state.retried.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
        }
        state.delivered.fetch_add(1, Ordering::SeqCst);
        state.pending.fetch_sub(1, Ordering::SeqCst);
    }
}
