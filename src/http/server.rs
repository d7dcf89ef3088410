//! The HTTP/1.1 server loop, with the limits a public endpoint needs. paysync's webhook route
//! is unauthenticated and reachable from the internet, so a client must not be able to hold
//! connections, file descriptors or handlers for free:
//! - a connection must complete a request's headers within the header timeout, counted from
//!   when it opened or its previous response was sent (so it also bounds idle keep-alive);
//! - a request's body must arrive within the body timeout (408);
//! - a handler must answer within the request timeout (503);
//! - at most `max_connections` connections are open (past it: 503, closed at once);
//! - at most `max_requests` API and webhook requests are in flight (past it: 503 with
//!   `Retry-After`); `/healthz`, `/readyz` and `/metrics` are exempt, so probes and scrapes
//!   answer under load.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use super::ApiError;

/// Limits of the HTTP server (`PAYSYNC_HTTP_*`).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_requests: 256,
        }
    }
}

/// Largest body any route takes (the webhook route's); routes apply their own smaller limits.
const MAX_ANY_BODY_BYTES: usize = super::MAX_WEBHOOK_BYTES;

/// How long a connection refused for capacity may take to receive its 503.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A pause after `accept` fails (out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The answer to a connection over `max_connections`: written before anything is read, then
/// the connection is closed.
const AT_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 81\r\n\r\n\
{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections; retry shortly\"}}\r\n";

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish for up to
/// `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(%peer, "connection refused: at the connection limit");
            tokio::spawn(refuse(stream));
            continue;
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), service(router.clone(), peer));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain_timeout) => {
            warn!(timeout = ?drain_timeout, "in-flight requests did not finish in time; exiting");
        }
    }
    info!("HTTP server stopped");
}

/// The router as a hyper service for one connection, which tells handlers the peer address.
fn service(
    router: Router,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = router.clone().oneshot(request.map(Body::new));
        async move { Ok::<_, Infallible>(response.await.into_response()) }
    })
}

async fn refuse(mut stream: TcpStream) {
    let write = async {
        stream.write_all(AT_CAPACITY).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
}

/// Reads the whole body within the body timeout (408 otherwise) before any handler runs, so a
/// client trickling bytes cannot hold a handler, a database connection or a lock. Reading
/// stops just past the largest body any route takes; the route's own limit then answers 413
/// (and the webhook route counts it), so size limits stay where they are documented.
pub async fn read_body_in_time(
    State(limits): State<ServerLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(limits.body_timeout, read_bounded(body)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => {
            ApiError::bad_request("unreadable_body", "the request body could not be read")
                .into_response()
        }
        Err(_) => {
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    limits.body_timeout
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// The body, or its first [`MAX_ANY_BODY_BYTES`] + 1 bytes when it is longer.
async fn read_bounded(mut body: Body) -> Result<bytes::Bytes, axum::Error> {
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            read.extend_from_slice(&data);
            if read.len() > MAX_ANY_BODY_BYTES {
                break;
            }
        }
    }
    Ok(read.freeze())
}

/// Answers 503 when a handler takes longer than the request timeout.
pub async fn answer_in_time(
    State(limits): State<ServerLimits>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request was not handled within {:?}; retry later",
                limits.request_timeout
            ),
        )
        .into_response(),
    }
}

/// Requests in flight on the routes it guards, shared by them all.
#[derive(Debug, Clone)]
pub struct InFlight(Arc<Semaphore>);

impl InFlight {
    pub fn new(max_requests: usize) -> Self {
        Self(Arc::new(Semaphore::new(max_requests.max(1))))
    }
}

/// Answers 503 with `Retry-After` when `max_requests` are already in flight.
pub async fn limit_in_flight(
    State(in_flight): State<InFlight>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = in_flight.0.try_acquire() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in flight; retry shortly",
        )
        .into_response();
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// The address a request came from (when served by [`serve`]; tests may route without it).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        ))
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capacity_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(AT_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "overloaded");
    }
}
