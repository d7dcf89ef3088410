//! The real `paysync` binary: start-up, migrations, configuration errors, secrets kept out of
//! logs, and graceful shutdown on SIGTERM.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::helpers::wait_for;

const TOKEN: &str = "binary-test-token-must-not-be-logged";
const DB_PASSWORD: &str = "db-password-must-not-be-logged";
/// Upper bound for the process to start or stop; a hang fails the test instead of blocking CI.
const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// The binary with a clean paysync environment (nothing inherited from the developer's shell).
fn paysync() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paysync"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PAYSYNC_") || name == "DATABASE_URL" || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command.env("PAYSYNC_LOG_FORMAT", "json").kill_on_drop(true);
    command
}

/// The test database's URL, with a password that trust authentication ignores, to check that
/// it never reaches the logs.
fn database_url(pool: &PgPool) -> String {
    let mut url = pool.connect_options().to_url_lossy();
    url.set_password(Some(DB_PASSWORD)).unwrap();
    url.to_string()
}

/// Collects a child's stdout lines as they arrive; the task ends at EOF, when the child exits.
fn capture_stdout(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
    let sink = lines.clone();
    let reading = tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    (lines, reading)
}

fn logged(lines: &Arc<Mutex<Vec<String>>>) -> String {
    lines.lock().unwrap().join("\n")
}

#[sqlx::test(migrations = false)]
async fn serve_migrates_serves_and_drains_on_sigterm(pool: PgPool) {
    let mut child = paysync()
        .arg("serve")
        .env("DATABASE_URL", database_url(&pool))
        .env("PAYSYNC_LISTEN", "127.0.0.1:0")
        .env("PAYSYNC_API_TOKENS", format!("other-token,{TOKEN}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, reading) = capture_stdout(&mut child);

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

    let client = reqwest::Client::new();
    let created = client
        .post(format!("http://{addr}/v1/customers"))
        .bearer_auth(TOKEN)
        .json(&json!({"email": "binary@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let outbox: i64 = sqlx::query_scalar("select count(*) from outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox, 1,
        "serve applied the migrations and wrote the outbox row"
    );

    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(PROCESS_DEADLINE, child.wait())
        .await
        .expect("paysync did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    reading.await.unwrap();

    let logs = logged(&lines);
    assert!(
        logs.contains("SIGTERM") && logs.contains("\"stopped\""),
        "{logs}"
    );
    assert!(!logs.contains(TOKEN), "a token was logged:\n{logs}");
    assert!(
        !logs.contains(DB_PASSWORD),
        "the database password was logged:\n{logs}"
    );
}

#[sqlx::test(migrations = false)]
async fn migrate_creates_the_schema_and_can_run_again(pool: PgPool) {
    for _ in 0..2 {
        let output = paysync()
            .arg("migrate")
            .env("DATABASE_URL", database_url(&pool))
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "select table_name::text from information_schema.tables \
         where table_schema = 'public' and table_name <> '_sqlx_migrations' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "customers",
            "dead_letters",
            "idempotency_keys",
            "outbox",
            "processed_events",
            "reconcile_runs",
            "sync_cursors"
        ]
    );
}

#[tokio::test]
async fn serve_without_tokens_explains_what_to_set() {
    let output = paysync()
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PAYSYNC_API_TOKENS"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

#[tokio::test]
async fn an_unreachable_database_fails_start_up_without_leaking_the_password() {
    let output = paysync()
        .arg("serve")
        .env(
            "DATABASE_URL",
            format!("postgres://paysync:{DB_PASSWORD}@127.0.0.1:1/paysync"),
        )
        .env("PAYSYNC_API_TOKENS", TOKEN)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("connecting to PostgreSQL at 127.0.0.1:1/paysync"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(DB_PASSWORD) && !stdout.contains(TOKEN),
        "{stdout}"
    );
}
