//! Slow and idle clients against the real server: header, body and request timeouts, the
//! connection and in-flight request limits, and probes answering under that load.

use std::time::{Duration, Instant};

use paysync::http::ServerLimits;
use reqwest::{Method, StatusCode};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::app::{TOKEN, TestApp, error_code, settings, with_webhooks};

/// Far above every limit under test, so a hang fails the test instead of stalling it.
const DEADLINE: Duration = Duration::from_secs(30);

async fn spawn(pool: PgPool, limits: ServerLimits) -> TestApp {
    let mut settings = settings();
    settings.http = limits;
    TestApp::spawn_settings(pool, with_webhooks(settings)).await
}

fn short_limits() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    }
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base_url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent. Fails if the server
/// keeps it open past the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(DEADLINE, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    });
    read.await
        .expect("the server kept a slow connection open past the deadline");
    String::from_utf8_lossy(&received).into_owned()
}

#[sqlx::test]
async fn connections_that_send_nothing_or_trickle_headers_are_closed(pool: PgPool) {
    let app = spawn(pool, short_limits()).await;
    // Nothing at all after connecting.
    let mut silent = connect(&app).await;
    let started = Instant::now();
    read_until_closed(&mut silent).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed early"
    );

    // Headers one byte at a time, slower than the header timeout allows in total.
    let mut trickle = connect(&app).await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if trickle.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !closed {
        let answer = read_until_closed(&mut trickle).await;
        assert!(
            !answer.contains("200 OK"),
            "served a trickled request: {answer}"
        );
    }

    // A keep-alive connection that goes idle after its response.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.stop().await;
}

#[sqlx::test]
async fn a_body_that_trickles_in_is_answered_408(pool: PgPool) {
    let app = spawn(pool, short_limits()).await;
    for (path, auth) in [
        ("/webhooks/stripe", String::new()),
        (
            "/v1/customers",
            format!("authorization: Bearer {TOKEN}\r\n"),
        ),
    ] {
        let mut slow = connect(&app).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             stripe-signature: t=1,v1=00\r\n{auth}content-length: 100\r\n\r\n{{"
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if slow.write_all(b" ").await.is_err() {
                    break;
                }
            }
            slow
        });
        let mut slow = writer.await.unwrap();
        let answer = read_until_closed(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(
            answer.contains(r#""code":"body_timeout""#),
            "{path}: {answer}"
        );
    }
    app.stop().await;
}

/// Takes every connection of the app's pool, so a handler that needs one waits (up to the
/// pool's acquire timeout, 5 s).
async fn exhaust_pool(app: &TestApp) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut held = Vec::new();
    while let Ok(Ok(conn)) =
        tokio::time::timeout(Duration::from_millis(300), app.pool.acquire()).await
    {
        held.push(conn);
    }
    held
}

#[sqlx::test]
async fn a_handler_that_takes_too_long_is_answered_503(pool: PgPool) {
    let limits = ServerLimits {
        request_timeout: Duration::from_secs(1),
        ..short_limits()
    };
    let app = spawn(pool, limits).await;
    let id = app.create_customer("slow-handler@example.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let held = exhaust_pool(&app).await;
    let response = app.get_customer(&id).await;
    assert_eq!(
        error_code(response, StatusCode::SERVICE_UNAVAILABLE).await,
        "timeout"
    );
    drop(held);
    assert_eq!(app.get_customer(&id).await.status(), StatusCode::OK);
    app.stop().await;
}

#[sqlx::test]
async fn requests_over_the_in_flight_limit_get_503_and_probes_still_answer(pool: PgPool) {
    let limits = ServerLimits {
        max_requests: 1,
        request_timeout: Duration::from_secs(20),
        ..ServerLimits::default()
    };
    let app = spawn(pool, limits).await;
    let held_connections = exhaust_pool(&app).await;
    // This request waits in its handler for a database connection.
    let held = {
        let request = app.request(Method::GET, "/v1/customers");
        tokio::spawn(async move { request.send().await.unwrap().status() })
    };
    let refused = crate::support::app::wait_for("the limit to be reached", DEADLINE, || async {
        let response = app
            .request(Method::GET, "/v1/dead-letters")
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            Ok(response)
        } else {
            Err(response.status().to_string())
        }
    })
    .await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        error_code(refused, StatusCode::SERVICE_UNAVAILABLE).await,
        "overloaded"
    );
    let webhook = app
        .client
        .post(app.url("/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(webhook, StatusCode::SERVICE_UNAVAILABLE).await,
        "overloaded"
    );
    for probe in ["/healthz", "/metrics"] {
        let response = app.client.get(app.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{probe}");
    }
    drop(held_connections);
    held.await.unwrap();
    let after = app
        .request(Method::GET, "/v1/customers")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    app.stop().await;
}

#[sqlx::test]
async fn connections_over_the_limit_are_refused_with_503(pool: PgPool) {
    let limits = ServerLimits {
        max_connections: 3,
        ..ServerLimits::default()
    };
    let app = spawn(pool, limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        // Each connection is accepted and served (so it counts), then stays open.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0u8; 1024];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut extra = connect(&app).await;
    let answer = read_until_closed(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"overloaded""#), "{answer}");
    drop(held);
    let health = crate::support::app::wait_for("a free connection", DEADLINE, || async {
        let response = app.client.get(app.url("/healthz")).send().await;
        match response {
            Ok(response) if response.status() == StatusCode::OK => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    health.await;
    app.stop().await;
}

#[sqlx::test]
async fn health_answers_while_hundreds_of_slow_clients_are_connected(pool: PgPool) {
    let app = spawn(pool, ServerLimits::default()).await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut stream = connect(&app).await;
        stream
            .write_all(b"POST /webhooks/stripe HTTP/1.1\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..10 {
        let response = client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let api = app
        .request(Method::GET, "/v1/customers")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::OK);
    drop(slow);
    app.stop().await;
}
