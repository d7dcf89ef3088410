//! The real `paysync` binary as a child process: a clean environment, its JSON logs
//! collected, started on a free port, stopped with SIGTERM or SIGKILL.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::{ConnectOptions, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::app::wait_for;

pub const TOKEN: &str = "binary-test-token-must-not-be-logged";
pub const DB_PASSWORD: &str = "db-password-must-not-be-logged";
/// Upper bound for the process to start or stop; a hang fails the test instead of blocking CI.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// The binary with a clean paysync environment (nothing inherited from the developer's shell).
pub fn paysync() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paysync"));
    for (name, _) in std::env::vars() {
        let ours = name.starts_with("PAYSYNC_")
            || name.starts_with("STRIPE_")
            || name.starts_with("KAFKA_");
        if ours || name == "DATABASE_URL" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.env("PAYSYNC_LOG_FORMAT", "json").kill_on_drop(true);
    command
}

/// The test database's URL, with a password that trust authentication ignores, to check that
/// it never reaches the logs.
pub fn database_url(pool: &PgPool) -> String {
    let mut url = pool.connect_options().to_url_lossy();
    url.set_password(Some(DB_PASSWORD)).unwrap();
    url.to_string()
}

/// A running `paysync serve`, with its address and collected logs.
pub struct ServeProcess {
    child: Child,
    pub base_url: String,
    lines: Arc<Mutex<Vec<String>>>,
    reading: JoinHandle<()>,
}

impl ServeProcess {
    /// Starts `paysync serve` on a free port with `env` and waits until it listens.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let mut command = paysync();
        command
            .arg("serve")
            .env("PAYSYNC_LISTEN", "127.0.0.1:0")
            .env("PAYSYNC_API_TOKENS", TOKEN)
            // localstripe is shared by every test: a reconcile would scan all of it. Tests of
            // the reconciler switch it back on with their own Stripe.
            .env("PAYSYNC_NO_RECONCILE", "true")
            .stdout(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = lines.clone();
        // Ends at EOF, when the process exits.
        let reading = tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = wait_for("the listening log line", PROCESS_DEADLINE, || {
            let lines = lines.clone();
            async move {
                let lines = lines.lock().unwrap();
                lines
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .find(|event| event["message"] == "listening")
                    .and_then(|event| event["addr"].as_str().map(str::to_owned))
                    .ok_or_else(|| lines.join("\n"))
            }
        })
        .await;
        Self {
            child,
            base_url: format!("http://{addr}"),
            lines,
            reading,
        }
    }

    /// A JSON request to the API, with the token.
    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(TOKEN)
            .json(body)
    }

    pub fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        self.request(client, reqwest::Method::POST, path, body)
    }

    pub fn patch(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        self.request(client, reqwest::Method::PATCH, path, body)
    }

    /// SIGTERM, then the exit status must be success; returns the logs.
    pub async fn sigterm_and_wait(mut self) -> String {
        kill(
            Pid::from_raw(self.child.id().unwrap() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        let status = tokio::time::timeout(PROCESS_DEADLINE, self.child.wait())
            .await
            .expect("paysync did not exit after SIGTERM")
            .unwrap();
        self.reading.await.unwrap();
        let logs = self.lines.lock().unwrap().join("\n");
        assert!(status.success(), "exit status {status}; logs:\n{logs}");
        logs
    }

    /// Waits for a JSON log line whose message is `message`; returns it.
    pub async fn log_line(&self, message: &str, deadline: Duration) -> Value {
        wait_for(&format!("the log line {message:?}"), deadline, || {
            let lines = self.lines.clone();
            async move {
                let lines = lines.lock().unwrap();
                lines
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .find(|event| event["message"] == message)
                    .ok_or_else(|| format!("{} lines", lines.len()))
            }
        })
        .await
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Where it listens.
    pub fn address(&self) -> std::net::SocketAddr {
        self.base_url.trim_start_matches("http://").parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    pub async fn sigkill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}
